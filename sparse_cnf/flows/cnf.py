"""Continuous normalizing flows: CNF blocks on [0, T], stacks of blocks, densities and samples at any t."""

__all__ = ["CNF", "CNFBlock", "DIVERGENCE_KINDS", "build_cnf", "standard_normal_log_prob"]

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from sparse_cnf.flows.conv import CONV_FIELD_KINDS, build_conv_fields
from sparse_cnf.flows.divergence import NOISE_KINDS, divergence_exact, divergence_hutchinson, sample_noise
from sparse_cnf.flows.fields import FIELD_KINDS, build_field
from sparse_cnf.flows.solver import MonitoredDynamics, NFECounter, SolverOptions, odeint_checked

DIVERGENCE_KINDS = ("exact", "hutchinson")


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """Return log N(z; 0, I) in nats for z of shape (B, D), as shape (B,) in the dtype of z."""
    return -0.5 * (z.pow(2).sum(dim=1) + z.shape[1] * math.log(2 * math.pi))


class _BlockDynamics(MonitoredDynamics):
    """Right-hand side of one solve of a block: (z, l) -> (f(t, z), Tr(df/dz)), or (z,) -> (f(t, z),)."""

    def __init__(
        self,
        block: "CNFBlock",
        decreasing: bool,
        noise: Tensor | None,
        with_logdet: bool,
    ):
        super().__init__(block.solver, decreasing, block.nfe_counter)

        self.field = block.field
        self.noise = noise
        self.with_logdet = with_logdet

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.count_evaluation()
        z = state[0]
        # Keep the graph of the divergence only when the caller differentiates this solve
        # (direct backpropagation, or the adjoint's backward solve, which enables grad).
        create_graph = torch.is_grad_enabled()

        if not self.with_logdet:
            dz = self.field(t, z)
            self.check_finite(t, (z, dz), "the state or the vector field's output")
            self._count_in_backward(dz)
            return (dz,)

        with torch.enable_grad():
            # Without create_graph, z becomes a fresh leaf. In the adjoint's forward solve the
            # first z is a view, made under no_grad, of an input that requires grad, and
            # autograd reports such a view as unused, so its divergence would read as 0.
            if not create_graph or not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self.field(t, z)
            if self.noise is None:
                div = divergence_exact(dz, z, create_graph=create_graph)
            else:
                div = divergence_hutchinson(dz, z, self.noise, create_graph=create_graph)
        self.check_finite(t, (z, dz, div), "the state, the vector field's output or its divergence")

        if not create_graph:
            return dz.detach(), div.detach()
        self._count_in_backward(dz)

        return dz, div

    def _count_in_backward(self, dz: Tensor) -> None:
        # Direct backpropagation evaluates no field in the backward pass. It passes through
        # this evaluation's graph instead, and the hook counts that passage.
        if self.in_forward_solve and not self.options.adjoint and dz.requires_grad:
            dz.register_hook(self.count_backward)


def _check_end_time(T: float | Tensor) -> float:
    if isinstance(T, Tensor):
        if T.numel() != 1:
            raise ValueError(
                f"`T` must be one end time shared by the whole batch; got a tensor of shape {tuple(T.shape)}. "
                "Per-sample time spans are not supported: group samples by end time and call the flow per group."
            )
        T = T.item()
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T <= 0:
        raise ValueError(f"`T` must be a finite number > 0; got {T!r}.")

    return float(T)


class CNFBlock(nn.Module):
    """One continuous normalizing flow dz/dt = f(t, z) from data at t=0 to t=T.

    The block integrates the state (z, l) with dl/dt = Tr(df/dz), so after a solve from 0 to
    T, l = log|det dz(T)/dz(0)| (instantaneous change of variables).

    Args:
        field: a vector field module with `forward(t, z)`, t 0-d and z of shape (B, D).
        T: end time, > 0.
        learnable_T: make the end time the parameter `T` (1 parameter, used as is without
            reparametrization); otherwise `T` is a buffer.
        divergence: "exact" or "hutchinson".
        noise: Hutchinson noise, "gaussian" or "rademacher". One draw per solve, reused at
            every function evaluation of that solve and of its adjoint.
        solver: solver options, a mapping of them, or None for the defaults.

    Raises:
        ValueError: on a T that is not a finite number > 0 (a tensor with several end times
            included), or an unknown divergence or noise.

    References:
        Neural Ordinary Differential Equations, R. T. Q. Chen et al., 2018, arXiv:1806.07366.
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
        W. Grathwohl et al., 2019, arXiv:1810.01367.
    """

    def __init__(
        self,
        field: nn.Module,
        T: float = 1.0,
        learnable_T: bool = False,
        divergence: str = "exact",
        noise: str = "gaussian",
        solver: SolverOptions | Mapping | None = None,
    ):
        super().__init__()

        end_time = torch.tensor(_check_end_time(T), dtype=torch.get_default_dtype())
        if divergence not in DIVERGENCE_KINDS:
            raise ValueError(f"`divergence` must be one of {', '.join(DIVERGENCE_KINDS)}; got {divergence!r}.")
        if noise not in NOISE_KINDS:
            raise ValueError(f"`noise` must be one of {', '.join(NOISE_KINDS)}; got {noise!r}.")

        self.field = field
        if learnable_T:
            self.T = nn.Parameter(end_time)
        else:
            self.register_buffer("T", end_time)
        self.divergence = divergence
        self.noise = noise
        self.solver = SolverOptions.from_mapping(solver)
        self.nfe_counter = NFECounter()

    def end_time(self) -> Tensor:
        """Return T as a 0-d tensor (a parameter when learnable).

        Raises:
            ValueError: if a learned T is no longer a finite number > 0.
        """
        value = float(self.T.detach())
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"the learned end time `T` of a CNF block is {value}, but it must be > 0; "
                "lower the learning rate or train with a fixed T."
            )

        return self.T

    def set_solver(self, options: SolverOptions | Mapping | None) -> None:
        """Replace the solver options with validated ones built from `options`, which stays unchanged."""
        self.solver = SolverOptions.from_mapping(options)

    def solve(
        self,
        z: Tensor,
        times: Tensor,
        with_logdet: bool = True,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Integrate from times[0] through the other output times, in local time of this block.

        Args:
            z: state at times[0], shape (B, D).
            times: 1-D strictly increasing or decreasing times in [0, T], dtype of z.
            with_logdet: integrate l with dl/dt = Tr(df/dz) next to z.
            noise: Hutchinson noise of shape (B, D); drawn once for this solve when None.
            generator: random number generator of the noise draw.

        Returns:
            z at each output time (K, B, D), and l at each output time (K, B) starting from
            l = 0, or None without `with_logdet`.

        Raises:
            SolveError: if the solve fails.
        """
        decreasing = bool(times[0] > times[-1])
        if with_logdet and self.divergence == "hutchinson":
            noise = sample_noise(z, self.noise, generator) if noise is None else noise
        else:
            noise = None
        dynamics = _BlockDynamics(self, decreasing, noise, with_logdet)
        state = (z, z.new_zeros(z.shape[0])) if with_logdet else (z,)

        solution = odeint_checked(dynamics, state, times, tuple(self.field.parameters()))

        return solution[0], (solution[1] if with_logdet else None)

    def forward(
        self,
        z: Tensor,
        reverse: bool = False,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Map z over the whole span: from 0 to T, or from T to 0 with `reverse`.

        Args:
            z: input state, shape (B, D).
            reverse: integrate from T back to 0.
            noise: Hutchinson noise of shape (B, D); drawn once for this solve when None.
            generator: random number generator of the noise draw.

        Returns:
            The output state (B, D) and log|det d(output)/d(input)| (B,).
        """
        end = self.end_time().to(z.dtype)
        times = torch.stack([torch.zeros_like(end), end])
        if reverse:
            times = times.flip(0)

        states, logdets = self.solve(z, times, noise=noise, generator=generator)

        return states[-1], logdets[-1]

    @property
    def nfe_forward(self) -> int:
        """Vector-field evaluations of forward solves since the last reset."""
        return self.nfe_counter.forward

    @property
    def nfe_backward(self) -> int:
        """Evaluations traversed by backward passes since the last reset (see `NFECounter`)."""
        return self.nfe_counter.backward

    def reset_nfe(self) -> None:
        """Set both NFE counters to 0."""
        self.nfe_counter.reset()


def _output_grid(local_times: list[float], end: Tensor, reverse: bool) -> tuple[Tensor, list[int]]:
    """Build the output times of one block solve and the index of each requested local time.

    The grid runs from 0 to T (from T to 0 with `reverse`) and contains every requested time
    once. Times are compared after rounding to the dtype of `end`.
    """
    end_value = float(end.detach())
    rounded = [float(torch.tensor(tau, dtype=end.dtype)) for tau in local_times]
    interior = sorted({tau for tau in rounded if 0.0 < tau < end_value})

    grid = torch.cat([end.new_zeros(1), end.new_tensor(interior), end.reshape(1)])
    position = {tau: i + 1 for i, tau in enumerate(interior)}
    position[0.0] = 0
    position[end_value] = len(interior) + 1
    indices = [position[min(max(tau, 0.0), end_value)] for tau in rounded]
    if reverse:
        grid = grid.flip(0)
        indices = [len(grid) - 1 - index for index in indices]

    return grid, indices


class CNF(nn.Module):
    """A stack of CNF blocks with a standard normal base distribution.

    Time convention: block b covers [offset_b, offset_b + T_b] of one model time axis, with
    offset_b the sum of the end times of the blocks before it. Data sit at t=0, the base
    distribution at t = sum of all T_b. The model's density at time t is the density of z(t)
    when z(0) follows the model, so `log_prob_at(x, [0])` equals `log_prob(x)` and
    `log_prob_at(z, [total T])` is the standard normal log-density.

    Args:
        blocks: the blocks, applied in order from data to base.
        dim: state dimension D.

    Raises:
        ValueError: on no blocks or a non-positive dim.
        TypeError: if a block is not a `CNFBlock`.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
        W. Grathwohl et al., 2019, arXiv:1810.01367.
    """

    def __init__(self, blocks: Sequence[CNFBlock], dim: int):
        super().__init__()

        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"`dim` must be a positive int; got {dim!r}.")
        if len(blocks) == 0:
            raise ValueError("`blocks` must contain at least one CNFBlock; got none.")
        for block in blocks:
            if not isinstance(block, CNFBlock):
                raise TypeError(f"every entry of `blocks` must be a CNFBlock; got {type(block).__name__}.")

        self.blocks = nn.ModuleList(blocks)
        self.dim = dim

    # Input checks and time bookkeeping.

    def _check_state(self, x: Tensor, name: str = "x") -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"`{name}` must be a tensor of shape (B, {self.dim}); got {shape}.")
        dtype = self.blocks[0].T.dtype
        if x.dtype != dtype:
            raise TypeError(
                f"`{name}` has dtype {x.dtype} but the model is in {dtype}; "
                f"convert one of them, for example with `{name}.to({dtype})` or `model.to({x.dtype})`."
            )

    def _offsets(self) -> list[float]:
        offsets = [0.0]
        for block in self.blocks:
            offsets.append(offsets[-1] + float(block.end_time().detach()))
        return offsets

    def total_time(self) -> float:
        """Return the end of the model time axis, the sum of the blocks' end times."""
        return self._offsets()[-1]

    def _locate_times(self, times: Sequence[float] | Tensor) -> list[tuple[int, float]]:
        """Map model times to (block index, local time); the total time maps to the last block's T."""
        if isinstance(times, Tensor):
            if times.dim() > 1:
                raise ValueError(
                    f"`times` must be a 1-D list of times shared by every sample; got shape {tuple(times.shape)}. "
                    "Per-sample times are not supported: group samples by time and call once per group."
                )
            times = times.reshape(-1).tolist()
        times = list(times)
        if not times:
            raise ValueError("`times` must contain at least one time; got none.")

        offsets = self._offsets()
        total = offsets[-1]
        located = []
        for t in times:
            t = float(t)
            if not 0.0 <= t <= total * (1 + 1e-12):
                raise ValueError(f"every entry of `times` must lie in [0, {total:.6g}]; got {t}.")
            index = next((b for b in range(len(self.blocks)) if t < offsets[b + 1]), len(self.blocks) - 1)
            located.append((index, min(t - offsets[index], offsets[index + 1] - offsets[index])))

        return located

    # Densities.

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Map data to the base space.

        Args:
            x: data, shape (B, D).
            generator: random number generator of Hutchinson noise.

        Returns:
            z (B, D), and delta_logp = log|det dz/dx| (B,), so that
            log p(x) = log N(z; 0, I) + delta_logp.
        """
        self._check_state(x)
        z, delta_logp = x, x.new_zeros(x.shape[0])
        for block in self.blocks:
            z, logdet = block(z, generator=generator)
            delta_logp = delta_logp + logdet

        return z, delta_logp

    def inverse(self, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Map base points to data space.

        Args:
            z: base points, shape (B, D).
            generator: random number generator of Hutchinson noise.

        Returns:
            x (B, D), and log|det dx/dz| (B,), the negative of `forward`'s delta_logp at x
            up to solver tolerance.
        """
        self._check_state(z, "z")
        x, delta_logp = z, z.new_zeros(z.shape[0])
        for block in reversed(self.blocks):
            x, logdet = block(x, reverse=True, generator=generator)
            delta_logp = delta_logp + logdet

        return x, delta_logp

    def log_prob(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Return the model's log-density of x (B, D) in nats, shape (B,)."""
        z, delta_logp = self(x, generator=generator)

        return standard_normal_log_prob(z) + delta_logp

    def log_prob_at(
        self, x: Tensor, times: Sequence[float] | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Evaluate the model's log-density at time t at the points x, for each t in `times`.

        Each time needs its own solve from t to the total time, so the cost grows with
        len(times).

        Args:
            x: points, shape (B, D).
            times: model times in [0, total time], shared by every sample.
            generator: random number generator of Hutchinson noise.

        Returns:
            log p_t(x) in nats, shape (len(times), B).

        Raises:
            ValueError: on a time outside [0, total time] or a times tensor with more than
                one dimension.
        """
        self._check_state(x)
        rows = []
        for index, local in self._locate_times(times):
            z, delta_logp = x, x.new_zeros(x.shape[0])
            block = self.blocks[index]
            end = block.end_time().to(x.dtype)
            start = end.new_tensor(local)
            if start < end:
                states, logdets = block.solve(z, torch.stack([start, end]), generator=generator)
                z, delta_logp = states[-1], logdets[-1]
            for later in self.blocks[index + 1 :]:
                z, logdet = later(z, generator=generator)
                delta_logp = delta_logp + logdet
            rows.append(standard_normal_log_prob(z) + delta_logp)

        return torch.stack(rows)

    def trajectory(
        self, x: Tensor, times: Sequence[float] | Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Follow x from t=0 to the total time in one pass and report the path at `times`.

        Args:
            x: data points z(0), shape (B, D).
            times: model times in [0, total time].
            generator: random number generator of Hutchinson noise.

        Returns:
            z(t) for each t, shape (len(times), B, D), and the model's log-density at time t
            at z(t), log p_t(z(t)) = log N(z(total); 0, I) + log|det dz(total)/dz(t)|, shape
            (len(times), B).
        """
        self._check_state(x)
        located = self._locate_times(times)
        states: list[Tensor | None] = [None] * len(located)
        logdets_so_far: list[Tensor | None] = [None] * len(located)

        z, delta_logp = x, x.new_zeros(x.shape[0])
        for index, block in enumerate(self.blocks):
            requests = [(k, local) for k, (b, local) in enumerate(located) if b == index]
            grid, positions = _output_grid([local for _, local in requests], block.end_time().to(x.dtype), False)
            path, logdets = block.solve(z, grid, generator=generator)
            for (k, _), position in zip(requests, positions):
                states[k] = path[position]
                logdets_so_far[k] = delta_logp + logdets[position]
            z, delta_logp = path[-1], delta_logp + logdets[-1]

        final_log_prob = standard_normal_log_prob(z) + delta_logp

        return torch.stack(states), final_log_prob - torch.stack(logdets_so_far)

    # Sampling.

    def _base_sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be a positive int; got {n!r}.")
        T = self.blocks[0].T

        return torch.randn(n, self.dim, generator=generator, dtype=T.dtype, device=T.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw n samples: z ~ N(0, I) integrated from the total time back to 0.

        Args:
            n: number of samples.
            generator: random number generator of the base draw.

        Returns:
            Samples, shape (n, D), in the dtype and on the device of the model.
        """
        x = self._base_sample(n, generator)
        for block in reversed(self.blocks):
            end = block.end_time().to(x.dtype)
            path, _ = block.solve(x, torch.stack([end, torch.zeros_like(end)]), with_logdet=False)
            x = path[-1]

        return x

    def sample_at(
        self, n: int, times: Sequence[float] | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw n base points and return their reverse trajectories at `times`.

        Args:
            n: number of samples.
            times: model times in [0, total time]; t=0 gives `sample`'s output.
            generator: random number generator of the base draw.

        Returns:
            Samples of the model at each time, shape (len(times), n, D), the same n
            trajectories at every time.
        """
        located = self._locate_times(times)
        x = self._base_sample(n, generator)
        states: list[Tensor | None] = [None] * len(located)

        for index in reversed(range(len(self.blocks))):
            block = self.blocks[index]
            requests = [(k, local) for k, (b, local) in enumerate(located) if b == index]
            grid, positions = _output_grid([local for _, local in requests], block.end_time().to(x.dtype), True)
            path, _ = block.solve(x, grid, with_logdet=False)
            for (k, _), position in zip(requests, positions):
                states[k] = path[position]
            x = path[-1]

        return torch.stack(states)

    # Solver options and counters.

    def set_solver(self, options: SolverOptions | Mapping | None) -> None:
        """Give every block validated solver options built from `options`, which stays unchanged."""
        options = SolverOptions.from_mapping(options)
        for block in self.blocks:
            block.set_solver(options)

    @property
    def nfe_forward(self) -> int:
        """Vector-field evaluations of forward solves in all blocks since the last reset."""
        return sum(block.nfe_forward for block in self.blocks)

    @property
    def nfe_backward(self) -> int:
        """Evaluations traversed by backward passes in all blocks since the last reset.

        With the adjoint, these are the evaluations of the augmented dynamics in the backward
        solve. With direct backpropagation, no field is evaluated again, and each forward
        evaluation that the gradient passes through counts once per backward pass.
        """
        return sum(block.nfe_backward for block in self.blocks)

    def reset_nfe(self) -> None:
        """Set the NFE counters of every block to 0."""
        for block in self.blocks:
            block.reset_nfe()


def build_cnf(
    dim: int,
    field: str = "mlp",
    hidden: Sequence[int] = (64, 64, 64),
    activation: str = "tanh",
    time_input: bool = True,
    num_blocks: int = 1,
    T: float = 1.0,
    learnable_T: bool = False,
    divergence: str = "exact",
    noise: str = "gaussian",
    solver: SolverOptions | Mapping | None = None,
    image_shape: Sequence[int] | None = None,
    num_scales: int | None = None,
) -> CNF:
    """Build a CNF from plain config values, one new field per block.

    Args:
        dim: state dimension D.
        field: "mlp", "concatsquash", or an image field of `sparse_cnf.flows.conv`:
            "conv" (FFJORD's concat convolutions) or "conv_concatsquash".
        hidden: widths of the hidden layers of every field (channels for image fields).
        activation: a key of `sparse_cnf.flows.fields.ACTIVATIONS`.
        time_input: whether t is an input of an MLP field.
        num_blocks: number of stacked blocks; for image fields, blocks per stage of the
            multiscale layout (`sparse_cnf.flows.conv.multiscale_stages`).
        T: end time of every block.
        learnable_T: learn each block's end time.
        divergence: "exact" or "hutchinson".
        noise: Hutchinson noise, "gaussian" or "rademacher".
        solver: solver options or a mapping of them, shared by the blocks.
        image_shape: (C, H, W) of flattened images; image fields only.
        num_scales: scales of the multiscale layout; image fields only. None takes FFJORD's
            rule, 1 gives a single-scale model.

    Returns:
        The flow.

    Raises:
        ValueError: on any invalid value, naming it.
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"`num_blocks` must be an int >= 1; got {num_blocks!r}.")
    options = SolverOptions.from_mapping(solver)
    if field in CONV_FIELD_KINDS:
        fields = build_conv_fields(field, dim, image_shape, hidden, activation, time_input, num_blocks, num_scales)
    elif field in FIELD_KINDS:
        if image_shape is not None or num_scales is not None:
            raise ValueError(
                f"`image_shape` and `num_scales` apply only to the image fields {', '.join(CONV_FIELD_KINDS)}; "
                f"got them with field {field!r}. Remove them or pick an image field."
            )
        fields = [build_field(field, dim, hidden, activation, time_input) for _ in range(num_blocks)]
    else:
        raise ValueError(f"`field` must be one of {', '.join(FIELD_KINDS + CONV_FIELD_KINDS)}; got {field!r}.")

    blocks = [
        CNFBlock(
            field_module,
            T=T,
            learnable_T=learnable_T,
            divergence=divergence,
            noise=noise,
            solver=options,
        )
        for field_module in fields
    ]

    return CNF(blocks, dim)
