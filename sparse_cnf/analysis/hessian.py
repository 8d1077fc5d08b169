"""Hessian spectrum of a loss with respect to a model's surviving parameters, from Hessian-vector products."""

__all__ = ["HessianStats", "ParameterCoordinates", "SpectralDensity", "hessian_stats"]

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn

METHODS = ("auto", "lanczos", "exact")
MODES = ("eval", "train")


@dataclass(frozen=True)
class ParameterCoordinates:
    """Position of one parameter's surviving entries in the Hessian's coordinate vector.

    Attributes:
        name: the parameter's name in `model.named_parameters()`.
        shape: the parameter's shape.
        indices: flat indices (into `parameter.flatten()`) of the surviving entries, ascending.
        offset: position of the first surviving entry in the coordinate vector.
    """

    name: str
    shape: tuple[int, ...]
    indices: np.ndarray = field(repr=False)
    offset: int


@dataclass(frozen=True)
class SpectralDensity:
    """Eigenvalue density estimate from stochastic Lanczos quadrature.

    Each random start vector gives a quadrature rule: nodes (Ritz values of the Lanczos
    tridiagonal matrix) and weights (squared first components of its eigenvectors) that sum
    to 1. The density is the average of these rules, smoothed with a Gaussian kernel.

    Attributes:
        nodes: one array of Ritz values per start vector.
        weights: the matching quadrature weights.
    """

    nodes: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]

    def evaluate(self, grid: np.ndarray, bandwidth: float) -> np.ndarray:
        """Evaluate the smoothed density on `grid` (eigenvalue units) with a Gaussian of std `bandwidth`."""
        if not bandwidth > 0:
            raise ValueError(f"`bandwidth` must be positive; got {bandwidth!r}")
        grid = np.asarray(grid, dtype=np.float64)
        density = np.zeros_like(grid)
        for nodes, weights in zip(self.nodes, self.weights):
            kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / bandwidth) ** 2)
            density += kernel @ weights / (bandwidth * math.sqrt(2 * math.pi))

        return density / len(self.nodes)


@dataclass(frozen=True)
class HessianStats:
    """Spectral statistics of the Hessian of a loss over a model's surviving parameters.

    Attributes:
        lambda_max: largest eigenvalue.
        lambda_min: smallest (most negative) eigenvalue.
        trace: the trace, exact or Hutchinson's estimate.
        trace_stderr: standard error of the Hutchinson estimate, 0 in exact mode.
        trace_samples: Rademacher vectors the Hutchinson estimate used, 0 in exact mode.
        condition: lambda_max / lambda_min, negative when lambda_min < 0 (a saddle point).
        lambda_min_positive: smallest eigenvalue found above the positivity cutoff, or NaN.
        condition_positive: lambda_max / lambda_min_positive, or NaN.
        condition_positive_note: why `condition_positive` is NaN, empty when it is defined.
        positive_cutoff: eigenvalues at or below this value count as zero for `condition_positive`.
        eigenvalues: every eigenvalue computed, ascending (all of them in exact mode, the
            `num_smallest` smallest and the largest with Lanczos).
        loss: the loss value at the analysed parameters.
        method: "lanczos" or "exact".
        mode: "eval" or "train", the module mode the loss was computed in.
        num_coordinates: surviving trainable scalars the Hessian is taken over.
        num_hvp: Hessian-vector products computed.
        seconds: wall time of the whole analysis.
        timings: wall time of each phase in seconds.
        coordinates: position of every parameter's surviving entries in the coordinate vector.
        unused_parameters: names of trainable parameters the loss does not reach (zero blocks).
        matrix: the dense Hessian over the coordinates in exact mode, else None.
        density: stochastic Lanczos quadrature of the spectrum when requested, else None.
    """

    lambda_max: float
    lambda_min: float
    trace: float
    trace_stderr: float
    trace_samples: int
    condition: float
    lambda_min_positive: float
    condition_positive: float
    condition_positive_note: str
    positive_cutoff: float
    eigenvalues: np.ndarray = field(repr=False)
    loss: float
    method: str
    mode: str
    num_coordinates: int
    num_hvp: int
    seconds: float
    timings: dict[str, float] = field(repr=False)
    coordinates: tuple[ParameterCoordinates, ...] = field(repr=False)
    unused_parameters: tuple[str, ...] = ()
    matrix: np.ndarray | None = field(default=None, repr=False)
    density: SpectralDensity | None = field(default=None, repr=False)

    def as_metrics(self, prefix: str = "hessian/") -> dict[str, float]:
        """Return the scalar results as floats keyed `{prefix}lambda_max` and so on, for logging."""
        values = {
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "trace": self.trace,
            "trace_stderr": self.trace_stderr,
            "condition": self.condition,
            "condition_positive": self.condition_positive,
            "num_coordinates": self.num_coordinates,
            "num_hvp": self.num_hvp,
            "seconds": self.seconds,
        }

        return {prefix + key: float(value) for key, value in values.items()}


# ---------------------------------------------------------------------------------------------
# Coordinates: the surviving entries of the trainable parameters


def _mask_of(module: nn.Module, parameter_name: str) -> Tensor | None:
    """Return the mask buffer that gates a parameter (`weight_mask` for `weight` or `weight_orig`)."""
    base = parameter_name.removesuffix("_orig")
    mask = getattr(module, f"{base}_mask", None)

    return mask if isinstance(mask, Tensor) else None


def _surviving_coordinates(model: nn.Module) -> tuple[list[nn.Parameter], list[ParameterCoordinates]]:
    masks = {}
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            mask = _mask_of(module, name)
            if mask is not None:
                masks[id(parameter)] = mask

    parameters, coordinates, offset = [], [], 0
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        mask = masks.get(id(parameter))
        if mask is None:
            indices = np.arange(parameter.numel())
        elif mask.shape != parameter.shape:
            raise ValueError(
                f"the mask of parameter '{name}' has shape {tuple(mask.shape)} but the parameter has shape "
                f"{tuple(parameter.shape)}; masks must match their parameter"
            )
        else:
            indices = torch.nonzero(mask.detach().flatten() != 0).flatten().cpu().numpy()
        parameters.append(parameter)
        coordinates.append(ParameterCoordinates(name, tuple(parameter.shape), indices, offset))
        offset += len(indices)

    return parameters, coordinates


# ---------------------------------------------------------------------------------------------
# Hessian-vector products by double backward


class _HessianVectorProduct:
    """Hessian-vector products over the surviving coordinates, counted, as numpy float64 vectors."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module], Tensor],
        parameters: list[nn.Parameter],
        coordinates: list[ParameterCoordinates],
        seed: int,
        recompute_graph: bool,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.parameters = parameters
        self.coordinates = coordinates
        self.seed = seed
        self.recompute_graph = recompute_graph
        self.num_coordinates = sum(len(c.indices) for c in coordinates)
        self.index_tensors = [torch.as_tensor(c.indices, device=p.device) for c, p in zip(coordinates, parameters)]
        self.num_hvp = 0

        loss, gradient = self._compute_gradient()
        self.loss = float(loss.detach())
        self.unused_parameters, self.constant_gradients = self._check_gradient(gradient)
        self._gradient = None if recompute_graph else gradient

    def _compute_gradient(self) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        # Re-seeding makes any randomness inside loss_fn (Hutchinson noise, data subsampling)
        # identical at every call, so the operator is the same symmetric matrix each time.
        torch.manual_seed(self.seed)
        loss = self.loss_fn(self.model)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"`loss_fn(model)` must return a scalar tensor; got {shape}")
        if not torch.isfinite(loss):
            raise ValueError(f"`loss_fn(model)` returned a non-finite loss ({loss.item()}); the Hessian is undefined")
        if not loss.requires_grad:
            raise ValueError(
                "`loss_fn(model)` returned a loss without a graph: it does not depend on any trainable "
                "parameter, or it was computed under torch.no_grad()"
            )
        gradient = torch.autograd.grad(loss.reshape(()), self.parameters, create_graph=True, allow_unused=True)

        return loss, gradient

    def _check_gradient(self, gradient: tuple[Tensor | None, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        names = [c.name for c in self.coordinates]
        unused = tuple(name for name, g in zip(names, gradient) if g is None)
        constant = tuple(name for name, g in zip(names, gradient) if g is not None and not g.requires_grad)

        if len(unused) + len(constant) == len(names):
            raise RuntimeError(
                "the gradient of the loss has no graph, so it cannot be differentiated again. "
                "torchdiffeq's odeint_adjoint computes gradients without a graph: solve with the direct "
                "solver (adjoint=False) inside loss_fn for Hessian analysis"
            )
        if unused:
            warnings.warn(
                f"the loss does not reach parameters {list(unused)}; their Hessian blocks are taken as zero",
                stacklevel=4,
            )
        if constant:
            warnings.warn(
                f"the gradient for parameters {list(constant)} does not depend on any parameter; "
                "their Hessian rows are taken as zero",
                stacklevel=4,
            )

        return unused, constant

    def _scatter(self, vector: np.ndarray) -> list[Tensor]:
        tensors = []
        for coordinate, parameter, index in zip(self.coordinates, self.parameters, self.index_tensors):
            full = torch.zeros(parameter.numel(), dtype=parameter.dtype, device=parameter.device)
            piece = vector[coordinate.offset : coordinate.offset + len(coordinate.indices)]
            full[index] = torch.as_tensor(piece, dtype=parameter.dtype, device=parameter.device)
            tensors.append(full.view_as(parameter))

        return tensors

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        gradient = self._compute_gradient()[1] if self.recompute_graph else self._gradient
        directions = self._scatter(vector)

        outputs, grad_outputs = [], []
        for g, direction in zip(gradient, directions):
            if g is not None and g.requires_grad:
                outputs.append(g)
                grad_outputs.append(direction)
        products = torch.autograd.grad(
            outputs, self.parameters, grad_outputs, retain_graph=not self.recompute_graph, allow_unused=True
        )

        result = np.zeros(self.num_coordinates)
        for coordinate, product, index in zip(self.coordinates, products, self.index_tensors):
            if product is not None:
                piece = product.detach().flatten()[index].to(torch.float64).cpu().numpy()
                result[coordinate.offset : coordinate.offset + len(coordinate.indices)] = piece
        self.num_hvp += 1

        return result


# ---------------------------------------------------------------------------------------------
# Model state: stated mode, no change to parameters, buffers or the global RNG


def _bitwise_equal(a: Tensor, b: Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False

    return bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


@contextmanager
def _analysis_state(model: nn.Module, mode: str) -> Iterator[None]:
    """Run the body in `mode` and restore every module flag, parameter, buffer and the torch RNG."""
    training_flags = [(module, module.training) for module in model.modules()]
    saved_parameters = [(name, p, p.detach().clone()) for name, p in model.named_parameters()]
    saved_buffers = [(b, b.detach().clone()) for _, b in model.named_buffers()]
    devices = sorted({p.device.index or 0 for _, p, _ in saved_parameters if p.device.type == "cuda"})

    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad():
            model.train(mode == "train")
            yield
    finally:
        for module, flag in training_flags:
            module.training = flag
        changed = []
        with torch.no_grad():
            for name, parameter, saved in saved_parameters:
                if not _bitwise_equal(parameter.detach(), saved):
                    changed.append(name)
                    parameter.copy_(saved)
            for buffer, saved in saved_buffers:
                if not _bitwise_equal(buffer, saved):
                    buffer.copy_(saved)
        if changed:
            warnings.warn(
                f"loss_fn changed parameters {changed} in place; they were restored to their values before the "
                "analysis",
                stacklevel=4,
            )


# ---------------------------------------------------------------------------------------------
# Spectral estimates


def _extreme_eigenvalues(
    operator: LinearOperator, k: int, which: str, v0: np.ndarray, tol: float, maxiter: int | None
) -> np.ndarray:
    try:
        values = eigsh(operator, k=k, which=which, v0=v0, tol=tol, maxiter=maxiter, return_eigenvectors=False)
    except ArpackNoConvergence as error:
        values = np.asarray(error.eigenvalues)
        warnings.warn(
            f"Lanczos (ARPACK, which='{which}') converged for {len(values)} of {k} eigenvalues within "
            f"eigsh_maxiter={maxiter}; raise eigsh_maxiter or eigsh_tol for a converged result",
            stacklevel=4,
        )

    return np.sort(np.asarray(values, dtype=np.float64))


def _hutchinson_trace(
    matvec: Callable[[np.ndarray], np.ndarray],
    n: int,
    rng: np.random.Generator,
    rtol: float,
    min_samples: int,
    max_samples: int,
    patience: int,
) -> tuple[float, float, int]:
    """Return Hutchinson's trace estimate, its standard error and the number of vectors used."""
    estimates = []
    previous_mean = math.nan
    calm_steps = 0
    for _ in range(max_samples):
        z = rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0
        estimates.append(float(z @ matvec(z)))
        mean = float(np.mean(estimates))
        calm_steps = calm_steps + 1 if abs(mean - previous_mean) <= rtol * abs(mean) else 0
        if len(estimates) >= min_samples and calm_steps >= patience:
            break
        previous_mean = mean
    else:
        warnings.warn(
            f"the Hutchinson trace estimate did not reach trace_rtol={rtol} within trace_max_samples={max_samples} "
            "vectors; its standard error is reported with it",
            stacklevel=3,
        )

    stderr = float(np.std(estimates, ddof=1) / math.sqrt(len(estimates)))

    return float(np.mean(estimates)), stderr, len(estimates)


def _lanczos_quadrature(
    matvec: Callable[[np.ndarray], np.ndarray], v0: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the nodes and weights of one Lanczos quadrature rule started from `v0`."""
    n = v0.shape[0]
    basis = np.zeros((steps, n))
    alphas, betas = [], []
    q = v0 / np.linalg.norm(v0)
    for j in range(steps):
        basis[j] = q
        w = matvec(q)
        alphas.append(float(q @ w))
        # Full reorthogonalization, twice, keeps spurious copies of extreme Ritz values out.
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(np.linalg.norm(w))
        if j == steps - 1 or beta <= 1e-12 * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        q = w / beta

    tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    nodes, vectors = np.linalg.eigh(tridiagonal)

    return nodes, vectors[0] ** 2


def _exact_spectrum(
    hvp: Callable[[np.ndarray], np.ndarray], n: int, timings: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Return the dense Hessian (one product per unit vector), all its eigenvalues and its trace."""
    phase = time.perf_counter()
    matrix = np.stack([hvp(unit) for unit in np.eye(n)], axis=1)
    eigenvalues = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
    timings["exact"] = time.perf_counter() - phase

    return matrix, eigenvalues, float(np.trace(matrix))


def _lanczos_extremes(
    operator: LinearOperator,
    n: int,
    num_smallest: int,
    rng: np.random.Generator,
    tol: float,
    maxiter: int | None,
    timings: dict[str, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Return the `num_smallest` smallest eigenvalues (at most n - 1) and the largest, each ascending."""
    phase = time.perf_counter()
    largest = _extreme_eigenvalues(operator, 1, "LA", rng.standard_normal(n), tol, maxiter)
    timings["lambda_max"] = time.perf_counter() - phase

    phase = time.perf_counter()
    smallest = _extreme_eigenvalues(operator, min(num_smallest, n - 1), "SA", rng.standard_normal(n), tol, maxiter)
    timings["lambda_min"] = time.perf_counter() - phase

    return smallest, largest


# ---------------------------------------------------------------------------------------------
# Condition numbers


def _condition_numbers(
    lambda_max: float, lambda_min: float, candidates: np.ndarray, cutoff: float, exhaustive: bool
) -> tuple[float, float, float, str]:
    """Return condition, smallest positive eigenvalue, condition over positives, and a note when NaN.

    `candidates` are the eigenvalues searched for the smallest positive one: the whole spectrum
    when `exhaustive`, else the smallest few, which contain it only if one of them is above `cutoff`.
    """
    if lambda_min != 0:
        condition = lambda_max / lambda_min
    else:
        condition = math.copysign(math.inf, lambda_max) if lambda_max != 0 else math.nan

    if not lambda_max > cutoff:
        return condition, math.nan, math.nan, f"lambda_max = {lambda_max:.6g} is not above the cutoff {cutoff:.3g}"
    positive = candidates[candidates > cutoff]
    if positive.size == 0:
        if exhaustive:
            note = f"no eigenvalue exceeds the cutoff {cutoff:.3g}"
        else:
            note = (
                f"none of the {candidates.size} smallest eigenvalues found exceeds the cutoff {cutoff:.3g}; "
                "raise num_smallest"
            )
        return condition, math.nan, math.nan, note
    lambda_positive = float(positive.min())

    return condition, lambda_positive, lambda_max / lambda_positive, ""


# ---------------------------------------------------------------------------------------------
# Entry point


def _check_options(method: str, mode: str, integers: dict[str, int | None], positives: dict[str, float | None]) -> None:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {', '.join(METHODS)}; got {method!r}")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {', '.join(MODES)}; got {mode!r}")
    for name, value in integers.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"`{name}` must be a non-negative integer; got {value!r}")
    for name, value in positives.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be positive and finite; got {value!r}")


def hessian_stats(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    method: str = "auto",
    mode: str = "eval",
    seed: int = 0,
    exact_max_coordinates: int = 256,
    num_smallest: int = 6,
    eigsh_tol: float = 1e-6,
    eigsh_maxiter: int | None = 100,
    trace_rtol: float = 1e-3,
    trace_min_samples: int = 10,
    trace_max_samples: int = 300,
    trace_patience: int = 3,
    positive_rtol: float | None = None,
    density_vectors: int = 0,
    density_steps: int = 30,
    recompute_graph: bool = False,
) -> HessianStats:
    """Compute the extreme eigenvalues, trace and condition numbers of a loss's Hessian.

    The Hessian is taken over the surviving trainable scalars: parameters with
    `requires_grad=False` are left out, and so are the entries whose mask buffer
    (`weight_mask` beside `weight`, as in `MaskedLinear` or `torch.nn.utils.prune`) is zero.
    A trainable parameter the loss does not reach is kept as a zero block, with a warning.
    Every product is a double backward pass with `torch.autograd.grad(..., create_graph=True)`,
    which works through `torchdiffeq.odeint` but not through `odeint_adjoint` (its gradients
    carry no graph, which raises a RuntimeError here).

    - lambda_max and lambda_min: Lanczos (ARPACK's `eigsh` on a `LinearOperator`) for the
      largest and the `num_smallest` smallest algebraic eigenvalues, started from seeded
      vectors so the result is reproducible.
    - trace: Hutchinson's estimator with Rademacher vectors, stopped once the running mean
      has changed by at most `trace_rtol` relative for `trace_patience` vectors in a row
      (after at least `trace_min_samples` vectors), reported with its standard error. A
      single small change can happen by chance long before the mean settles, which is why
      the test must hold for several vectors.
    - condition = lambda_max / lambda_min, which keeps the sign of lambda_min, so a negative
      value marks a saddle point. condition_positive = lambda_max / lambda_min_positive, where
      lambda_min_positive is the smallest eigenvalue found above
      `positive_rtol * lambda_max`. With Lanczos it is searched among the `num_smallest`
      smallest eigenvalues, which contain it unless at least that many eigenvalues are at or
      below the cutoff (then it is NaN, with the reason in `condition_positive_note`).
    - method="exact" forms the dense Hessian from one product per unit vector, then takes all
      eigenvalues with `numpy.linalg.eigvalsh` of its symmetric part and the trace from its
      diagonal. method="auto" uses it up to `exact_max_coordinates` coordinates.

    The loss is computed with the model in `mode`. Afterwards every module's training flag,
    every parameter and buffer (bitwise, including BatchNorm statistics updated in train mode)
    and the global torch RNG state are as before. `torch.manual_seed(seed)` runs before every
    call of `loss_fn`, so randomness inside it is the same in every product.

    References:
        A stochastic estimator of the trace of the influence matrix for Laplacian smoothing
        splines. Hutchinson, 1989. Communications in Statistics - Simulation and Computation.
        ARPACK Users' Guide. Lehoucq et al., 1998. SIAM.
        An Investigation into Neural Net Optimization via Hessian Eigenvalue Density.
        Ghorbani et al., 2019. arXiv:1901.10159.
        PyHessian: Neural Networks Through the Lens of the Hessian. Yao et al., 2020.
        arXiv:1912.07145.

    Args:
        model: the module whose trainable parameters the Hessian is taken over.
        loss_fn: computes the scalar loss from `model`. It fixes the data subset and the solver
            (non-adjoint). It is called once, or once per product with `recompute_graph`.
        method: "auto", "lanczos" or "exact".
        mode: "eval" or "train", the module mode during the analysis.
        seed: seeds the Lanczos start vectors, the Hutchinson and density vectors, and the
            torch RNG before each `loss_fn` call.
        exact_max_coordinates: the largest number of coordinates for which "auto" is exact.
        num_smallest: smallest eigenvalues Lanczos computes (for lambda_min and lambda_min_positive).
        eigsh_tol: relative accuracy of the Lanczos eigenvalues (ARPACK's `tol`).
        eigsh_maxiter: ARPACK restarts allowed per call (None: scipy's default, 10 n).
        trace_rtol: relative change of the running trace mean at which Hutchinson stops.
        trace_min_samples: fewest Hutchinson vectors, at least 2.
        trace_max_samples: most Hutchinson vectors; reaching it warns.
        trace_patience: consecutive vectors that must each change the running mean by at most
            `trace_rtol` relative before Hutchinson stops, at least 1.
        positive_rtol: eigenvalues at or below `positive_rtol * lambda_max` count as zero for
            `condition_positive`; None uses 1000 times the machine epsilon of the parameters' dtype.
        density_vectors: start vectors for stochastic Lanczos quadrature, 0 to skip it.
        density_steps: Lanczos steps per density vector.
        recompute_graph: compute the loss and its gradient again for every product instead of
            keeping the first-order graph, trading time for memory.

    Returns:
        The statistics, with the method and mode used, counts and timings.

    Raises:
        ValueError: on invalid options, a model without surviving trainable scalars, or a loss
            that is not a finite scalar with a graph.
        RuntimeError: if the gradient cannot be differentiated again (adjoint solver).
    """
    _check_options(
        method,
        mode,
        {
            "seed": seed,
            "exact_max_coordinates": exact_max_coordinates,
            "num_smallest": num_smallest,
            "eigsh_maxiter": eigsh_maxiter,
            "trace_min_samples": trace_min_samples,
            "trace_max_samples": trace_max_samples,
            "trace_patience": trace_patience,
            "density_vectors": density_vectors,
            "density_steps": density_steps,
        },
        {"eigsh_tol": eigsh_tol, "trace_rtol": trace_rtol, "positive_rtol": positive_rtol},
    )
    if num_smallest < 1:
        raise ValueError(f"`num_smallest` must be at least 1; got {num_smallest}")
    if trace_min_samples < 2:
        raise ValueError(f"`trace_min_samples` must be at least 2 for a standard error; got {trace_min_samples}")
    if trace_max_samples < trace_min_samples:
        raise ValueError(
            f"`trace_max_samples` ({trace_max_samples}) must be at least `trace_min_samples` ({trace_min_samples})"
        )
    if trace_patience < 1:
        raise ValueError(f"`trace_patience` must be at least 1; got {trace_patience}")
    if density_steps < 1:
        raise ValueError(f"`density_steps` must be at least 1; got {density_steps}")

    # Coordinates, method and seeds.
    parameters, coordinates = _surviving_coordinates(model)
    n = sum(len(c.indices) for c in coordinates)
    if n == 0:
        raise ValueError("the model has no surviving trainable parameter entries; nothing to take the Hessian over")
    if method == "auto":
        method = "exact" if n <= exact_max_coordinates else "lanczos"
    if method == "lanczos" and n < 3:
        raise ValueError(f"Lanczos needs at least 3 coordinates; the model has {n}. Use method='exact'")
    if positive_rtol is None:
        positive_rtol = 1000.0 * torch.finfo(parameters[0].dtype).eps
    # Independent streams, so that turning the density on does not change the trace vectors.
    start_vectors, trace_rng, density_rng = (np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3))

    # Spectra from Hessian-vector products, inside the stated mode with the state restored after.
    start = time.perf_counter()
    timings = {}
    with _analysis_state(model, mode):
        hvp = _HessianVectorProduct(model, loss_fn, parameters, coordinates, seed, recompute_graph)
        timings["gradient"] = time.perf_counter() - start
        operator = LinearOperator((n, n), matvec=hvp, dtype=np.float64)

        if method == "exact":
            matrix, eigenvalues, trace = _exact_spectrum(hvp, n, timings)
            trace_stderr, trace_samples, smallest = 0.0, 0, eigenvalues
        else:
            matrix = None
            smallest, largest = _lanczos_extremes(
                operator, n, num_smallest, start_vectors, eigsh_tol, eigsh_maxiter, timings
            )
            eigenvalues = np.sort(np.concatenate([smallest, largest]))
            phase = time.perf_counter()
            trace, trace_stderr, trace_samples = _hutchinson_trace(
                hvp, n, trace_rng, trace_rtol, trace_min_samples, trace_max_samples, trace_patience
            )
            timings["trace"] = time.perf_counter() - phase

        density = None
        if density_vectors > 0:
            phase = time.perf_counter()
            steps = min(density_steps, n)
            rules = [_lanczos_quadrature(hvp, density_rng.standard_normal(n), steps) for _ in range(density_vectors)]
            density = SpectralDensity(tuple(r[0] for r in rules), tuple(r[1] for r in rules))
            timings["density"] = time.perf_counter() - phase

    # Condition numbers.
    if eigenvalues.size == 0:
        lambda_max = lambda_min = math.nan
    else:
        lambda_max, lambda_min = float(eigenvalues.max()), float(eigenvalues.min())
    cutoff = positive_rtol * max(lambda_max, 0.0) if math.isfinite(lambda_max) else math.nan
    exhaustive = method == "exact" or eigenvalues.size >= n
    candidates = eigenvalues if exhaustive else smallest
    condition, lambda_positive, condition_positive, note = _condition_numbers(
        lambda_max, lambda_min, candidates, cutoff, exhaustive
    )

    return HessianStats(
        lambda_max=lambda_max,
        lambda_min=lambda_min,
        trace=trace,
        trace_stderr=trace_stderr,
        trace_samples=trace_samples,
        condition=condition,
        lambda_min_positive=lambda_positive,
        condition_positive=condition_positive,
        condition_positive_note=note,
        positive_cutoff=cutoff,
        eigenvalues=eigenvalues,
        loss=hvp.loss,
        method=method,
        mode=mode,
        num_coordinates=n,
        num_hvp=hvp.num_hvp,
        seconds=time.perf_counter() - start,
        timings=timings,
        coordinates=tuple(coordinates),
        unused_parameters=hvp.unused_parameters,
        matrix=matrix,
        density=density,
    )
