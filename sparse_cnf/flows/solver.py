"""ODE solver options, validated in one place, and a solve that names the reason when it fails."""

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_GRID_METHODS",
    "METHODS",
    "MonitoredDynamics",
    "NFECounter",
    "SolveError",
    "SolverOptions",
    "odeint_checked",
]

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

# NOTE: torchdiffeq 0.2.5 exports no list of its methods. SOLVERS is the private dict that
# odeint itself reads, so the names accepted here are always the ones odeint accepts.
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
from torchdiffeq._impl.solvers import FixedGridODESolver

METHODS: tuple[str, ...] = tuple(SOLVERS)
ADAPTIVE_METHODS: tuple[str, ...] = tuple(
    name for name, cls in SOLVERS.items() if issubclass(cls, RKAdaptiveStepsizeODESolver)
)
FIXED_GRID_METHODS: tuple[str, ...] = tuple(
    name for name, cls in SOLVERS.items() if issubclass(cls, FixedGridODESolver)
)
# "scipy_solver" runs scipy's LSODA on NumPy copies, so no gradients flow through it, and it
# calls no step callbacks. It serves evaluation only and is never the adjoint method.
_NO_GRADIENT_METHODS = tuple(name for name in METHODS if name not in ADAPTIVE_METHODS + FIXED_GRID_METHODS)

NON_FINITE = "non-finite state"
STEP_UNDERFLOW = "step size underflow"
STEP_LIMIT = "step limit"


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive(name: str, value: Any, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`solver.{name}` must be a finite number > 0; got {value!r}.")
    return float(value)


def _check_method(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"`solver.{name}` must be one of {', '.join(allowed)}; got {value!r}.")
    return value


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """Options of the ODE solves of a CNF, checked when the object is built.

    Args:
        method: a torchdiffeq method, one of `METHODS`. Adaptive methods (`ADAPTIVE_METHODS`)
            use rtol/atol; fixed-grid methods (`FIXED_GRID_METHODS`) need `step_size`.
        rtol: relative tolerance of adaptive methods, > 0.
        atol: absolute tolerance of adaptive methods, > 0.
        adjoint: backpropagate with the adjoint method (memory constant in the number of
            steps, one extra backward solve) instead of through the solver's operations.
        adjoint_method: method of the backward solve; `method` when None.
        adjoint_rtol: relative tolerance of the backward solve; `rtol` when None.
        adjoint_atol: absolute tolerance of the backward solve; `atol` when None.
        step_size: step of fixed-grid methods, in units of t.
        max_num_steps: maximum number of steps (accepted and rejected) of one solve; the
            solve raises `SolveError` beyond it. The default is a guard against a stiff field
            stalling a run, not a tuned value.
        first_step: initial step of adaptive methods; chosen by the solver when None.
        min_step: smallest step of adaptive methods. A step at this size is accepted whatever
            its error estimate, so a value > 0 turns a step-size underflow into inaccurate
            steps.

    Raises:
        ValueError: on an unknown method, a tolerance or step that is not > 0, or an option
            that the chosen method does not use.
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    adjoint: bool = False
    adjoint_method: str | None = None
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None
    step_size: float | None = None
    max_num_steps: int = 10_000
    first_step: float | None = None
    min_step: float = 0.0

    def __post_init__(self) -> None:
        set_field = object.__setattr__

        _check_method("method", self.method, METHODS)
        set_field(self, "rtol", _check_positive("rtol", self.rtol))
        set_field(self, "atol", _check_positive("atol", self.atol))
        if not isinstance(self.adjoint, bool):
            raise ValueError(f"`solver.adjoint` must be true or false; got {self.adjoint!r}.")
        if self.adjoint_method is not None:
            _check_method("adjoint_method", self.adjoint_method, ADAPTIVE_METHODS + FIXED_GRID_METHODS)
        set_field(self, "adjoint_rtol", _check_positive("adjoint_rtol", self.adjoint_rtol, optional=True))
        set_field(self, "adjoint_atol", _check_positive("adjoint_atol", self.adjoint_atol, optional=True))
        set_field(self, "step_size", _check_positive("step_size", self.step_size, optional=True))
        set_field(self, "first_step", _check_positive("first_step", self.first_step, optional=True))
        if isinstance(self.max_num_steps, bool) or not isinstance(self.max_num_steps, int) or self.max_num_steps < 1:
            raise ValueError(f"`solver.max_num_steps` must be an int >= 1; got {self.max_num_steps!r}.")
        if not _is_real(self.min_step) or not math.isfinite(self.min_step) or self.min_step < 0:
            raise ValueError(f"`solver.min_step` must be a finite number >= 0; got {self.min_step!r}.")
        set_field(self, "min_step", float(self.min_step))

        self._check_combination()

    def _check_combination(self) -> None:
        methods_in_use = [self.method]
        if self.adjoint:
            if self.method in _NO_GRADIENT_METHODS and self.adjoint_method is None:
                raise ValueError(
                    f"`solver.adjoint_method` is required when `solver.method` is {self.method!r}, which gives "
                    f"no gradients; set it to one of {', '.join(ADAPTIVE_METHODS)}."
                )
            methods_in_use.append(self.resolved_adjoint_method)

        fixed = [name for name in methods_in_use if name in FIXED_GRID_METHODS]
        adaptive = [name for name in methods_in_use if name in ADAPTIVE_METHODS]
        if fixed and self.step_size is None:
            raise ValueError(
                f"`solver.step_size` is required by the fixed-grid method {fixed[0]!r}; got None. "
                "Set it, for example to 0.05, or choose an adaptive method such as 'dopri5'."
            )
        if self.step_size is not None and not fixed:
            raise ValueError(
                f"`solver.step_size` applies only to fixed-grid methods ({', '.join(FIXED_GRID_METHODS)}); "
                f"got step_size={self.step_size} with method {self.method!r}. Remove it, or use `first_step`."
            )
        if self.first_step is not None and not adaptive:
            raise ValueError(
                f"`solver.first_step` applies only to adaptive methods ({', '.join(ADAPTIVE_METHODS)}); "
                f"got first_step={self.first_step} with method {self.method!r}. Remove it."
            )
        if self.min_step > 0 and not adaptive and self.method not in _NO_GRADIENT_METHODS:
            raise ValueError(
                f"`solver.min_step` applies only to adaptive methods ({', '.join(ADAPTIVE_METHODS)}); "
                f"got min_step={self.min_step} with method {self.method!r}. Set it to 0."
            )

    @classmethod
    def from_mapping(cls, mapping: "Mapping[str, Any] | SolverOptions | None") -> "SolverOptions":
        """Build options from a mapping such as a Hydra config node, without changing the mapping.

        Args:
            mapping: option names to values; missing keys take the defaults. A
                `SolverOptions` is returned as is, and None gives the defaults.

        Returns:
            The validated options.

        Raises:
            TypeError: if `mapping` is not a mapping.
            ValueError: on an unknown key or an invalid value.
        """
        if mapping is None:
            return cls()
        if isinstance(mapping, SolverOptions):
            return mapping
        if not isinstance(mapping, Mapping):
            raise TypeError(f"`solver` must be a mapping or SolverOptions; got {type(mapping).__name__}.")

        valid = [field.name for field in dataclasses.fields(cls)]
        values = {str(key): value for key, value in mapping.items()}
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown solver option(s) {', '.join(unknown)}; valid options are {', '.join(valid)}.")

        return cls(**values)

    def replace(self, **changes: Any) -> "SolverOptions":
        """Return a validated copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def resolved_adjoint_method(self) -> str:
        """The method of the adjoint's backward solve."""
        return self.method if self.adjoint_method is None else self.adjoint_method

    def _method_options(self, method: str) -> dict[str, Any]:
        if method in FIXED_GRID_METHODS:
            return {"step_size": self.step_size}
        options: dict[str, Any] = {"min_step": self.min_step}
        if method in ADAPTIVE_METHODS and self.first_step is not None:
            options["first_step"] = self.first_step
        return options

    def odeint_kwargs(self) -> dict[str, Any]:
        """Return fresh keyword arguments for torchdiffeq's `odeint` (and `odeint_adjoint`)."""
        kwargs = {
            "method": self.method,
            "rtol": self.rtol,
            "atol": self.atol,
            "options": self._method_options(self.method),
        }
        if self.adjoint:
            kwargs["adjoint_method"] = self.resolved_adjoint_method
            kwargs["adjoint_rtol"] = self.rtol if self.adjoint_rtol is None else self.adjoint_rtol
            kwargs["adjoint_atol"] = self.atol if self.adjoint_atol is None else self.adjoint_atol
            kwargs["adjoint_options"] = self._method_options(self.resolved_adjoint_method)

        return kwargs


_FIXES = {
    NON_FINITE: (
        "rtol, atol",
        "The vector field or the state became NaN or inf. Check the input and the field's weights "
        "(a diverged training step, a learning rate that is too high), or tighten `rtol`/`atol` so "
        "the solver does not step into a blow-up.",
    ),
    STEP_UNDERFLOW: (
        "min_step",
        "The adaptive step size fell below what t can resolve, so the field is stiff or diverging "
        "near this t. Set `min_step` > 0 to accept steps of that size anyway, or loosen `rtol`/`atol`.",
    ),
    STEP_LIMIT: (
        "max_num_steps",
        "The solve took more steps than `max_num_steps` allows. Raise `max_num_steps` or loosen "
        "`rtol`/`atol`; a field that needs this many steps is often stiff.",
    ),
}


class SolveError(RuntimeError):
    """An ODE solve failure: its kind, where it happened and which option to change.

    Attributes:
        kind: "non-finite state", "step size underflow" or "step limit".
        t: the time at which the failure was detected (None if unknown).
        step_size: the last step size the solver tried (None if unknown).
        nfe: function evaluations of this solve until the failure.
        option: the solver option(s) to change.
        phase: "forward" or "adjoint backward".
    """

    def __init__(
        self,
        kind: str,
        t: float | None,
        step_size: float | None,
        nfe: int,
        phase: str = "forward",
        detail: str = "",
    ):
        self.kind = kind
        self.t = t
        self.step_size = step_size
        self.nfe = nfe
        self.phase = phase
        self.detail = detail
        self.option, advice = _FIXES[kind]

        t_text = "unknown" if t is None else f"{t:.6g}"
        step_text = "unknown" if step_size is None else f"{step_size:.3g}"
        message = (
            f"ODE solve ({phase}) failed with {kind} at t={t_text} (step size {step_text}, "
            f"{nfe} function evaluations so far). {advice}"
        )
        if detail:
            message += f" Details: {detail}"
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.kind, self.t, self.step_size, self.nfe, self.phase, self.detail)


def _all_finite(tensors: tuple[Tensor, ...] | list[Tensor]) -> bool:
    flags = [torch.isfinite(tensor).all() for tensor in tensors]
    return bool(torch.stack(flags).all())


class NFECounter:
    """Running counts of function evaluations of a module's solves.

    Attributes:
        forward: evaluations of the vector field made by forward solves.
        backward: evaluations traversed by backward passes. With the adjoint, these are the
            evaluations of the augmented dynamics in the backward solve (each one a field
            evaluation plus a vector-Jacobian product). With direct backpropagation, no field
            is evaluated again, and each forward evaluation that the gradient passes through
            counts once per backward pass.
    """

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0

    def reset(self) -> None:
        """Set both counts to 0."""
        self.forward = 0
        self.backward = 0


class MonitoredDynamics(nn.Module):
    """Base class of the right-hand side of one solve: counts steps and evaluations, detects failures.

    A subclass implements `forward(t, state)` and calls `count_evaluation()` and
    `check_finite(t, tensors, description)` in it. torchdiffeq calls `callback_step` before
    each step of the forward solve and `callback_step_adjoint` before each step of the
    adjoint's backward solve. Both record t and the step size and count the steps. They raise
    `SolveError` before torchdiffeq's own assertions would fire.

    Args:
        options: the solver options of this solve.
        decreasing: whether the forward solve runs from larger to smaller t.
        counter: running counts to add this solve's evaluations to.
    """

    def __init__(self, options: SolverOptions, decreasing: bool, counter: NFECounter | None = None):
        super().__init__()

        self.options = options
        self.counter = NFECounter() if counter is None else counter
        self.decreasing = decreasing
        self.in_forward_solve = False
        self.forward_steps = 0
        self.backward_steps = 0
        self.forward_nfe = 0
        self.backward_nfe = 0
        self.last_t: float | None = None
        self.last_step_size: float | None = None

    @property
    def phase(self) -> str:
        """Phase of the solve: "forward" while the forward solve runs, else "adjoint backward"."""
        return "forward" if self.in_forward_solve else "adjoint backward"

    def count_evaluation(self) -> None:
        """Count one evaluation in the current phase."""
        if self.in_forward_solve:
            self.forward_nfe += 1
            self.counter.forward += 1
        else:
            self.count_backward()

    def count_backward(self, *_: Any) -> None:
        """Count one evaluation traversed by a backward pass; usable as a tensor hook."""
        self.backward_nfe += 1
        self.counter.backward += 1

    def error(self, kind: str, detail: str = "") -> SolveError:
        """Build the `SolveError` of `kind` at the last recorded t and step size."""
        nfe = self.forward_nfe if self.in_forward_solve else self.backward_nfe
        return SolveError(kind, self.last_t, self.last_step_size, nfe, self.phase, detail)

    def check_finite(self, t: Tensor, tensors: tuple[Tensor, ...] | list[Tensor], description: str) -> None:
        """Raise `SolveError` if any of `tensors` at time t contains NaN or inf."""
        if not _all_finite(tensors):
            self.last_t = float(t.detach())
            raise self.error(NON_FINITE, f"{description} contains NaN or inf.")

    def _on_step(self, real_t: float, solver_t: Tensor, state: Any, dt: Tensor, steps: int) -> None:
        self.last_t = real_t
        self.last_step_size = float(dt.detach())
        if steps > self.options.max_num_steps:
            raise self.error(STEP_LIMIT, f"max_num_steps={self.options.max_num_steps}.")
        # torchdiffeq integrates in a frame where t increases, and asserts t + dt > t.
        if not bool(solver_t + dt > solver_t):
            raise self.error(STEP_UNDERFLOW, f"min_step={self.options.min_step}.")
        tensors = state if isinstance(state, (tuple, list)) else (state,)
        if not _all_finite(tensors):
            raise self.error(NON_FINITE, "the state at the start of a step contains NaN or inf.")

    def callback_step(self, t0: Tensor, y0: Any, dt: Tensor) -> None:
        """Check the state and step before each forward step; t0 is the real time."""
        self.forward_steps += 1
        solver_t = -t0 if self.decreasing else t0
        self._on_step(float(t0.detach()), solver_t, y0, dt, self.forward_steps)

    def callback_step_adjoint(self, t0: Tensor, y0: Any, dt: Tensor) -> None:
        """Check the state and step before each step of the adjoint's backward solve."""
        self.backward_steps += 1
        # t0 arrives in the frame of the forward solve, negated when that solve decreases,
        # and the backward solve runs against it.
        real_t = -float(t0.detach()) if self.decreasing else float(t0.detach())
        self._on_step(real_t, -t0, y0, dt, self.backward_steps)


_ASSERTION_KINDS = {
    "non-finite values in state": NON_FINITE,
    "underflow in dt": STEP_UNDERFLOW,
    "max_num_steps exceeded": STEP_LIMIT,
}


def odeint_checked(
    func: MonitoredDynamics,
    y0: tuple[Tensor, ...],
    times: Tensor,
    adjoint_params: tuple[Tensor, ...],
) -> tuple[Tensor, ...]:
    """Solve dy/dt = func(t, y) from times[0] with func's options, raising `SolveError` on failure.

    Args:
        func: the right-hand side; its `options` choose the method and the adjoint.
        y0: initial state, a tuple of tensors.
        times: 1-D tensor of strictly monotone output times; times[0] is the start.
        adjoint_params: the parameters the adjoint computes gradients for; those without
            `requires_grad` are skipped.

    Returns:
        The state at each output time, each tensor with a leading dimension len(times).

    Raises:
        SolveError: on a non-finite state, a step-size underflow or the step limit.
        ValueError: if gradients are needed through a method that gives none.
    """
    options = func.options
    kwargs = options.odeint_kwargs()
    needs_gradient = torch.is_grad_enabled() and (
        any(p.requires_grad for p in adjoint_params) or any(y.requires_grad for y in y0) or times.requires_grad
    )
    if options.method in _NO_GRADIENT_METHODS and needs_gradient and not options.adjoint:
        raise ValueError(
            f"`solver.method` {options.method!r} gives no gradients; call it under torch.no_grad(), "
            f"set `solver.adjoint` with an `adjoint_method`, or choose one of {', '.join(ADAPTIVE_METHODS)}."
        )

    func.in_forward_solve = True
    try:
        with warnings.catch_warnings():
            if options.method in _NO_GRADIENT_METHODS:
                # torchdiffeq warns on every solve with a method that calls no step callbacks.
                warnings.filterwarnings("ignore", message="Solver '.*' does not support callbacks")
            if options.adjoint:
                solution = odeint_adjoint(func, y0, times, adjoint_params=adjoint_params, **kwargs)
            else:
                solution = odeint(func, y0, times, **kwargs)
    except AssertionError as err:
        message = str(err)
        kind = next((kind for prefix, kind in _ASSERTION_KINDS.items() if message.startswith(prefix)), None)
        if kind is None:
            raise
        raise func.error(kind, message.splitlines()[0][:200]) from err
    finally:
        func.in_forward_solve = False

    # Fixed-grid output between grid points is interpolated, and scipy runs without
    # callbacks, so the final check catches anything the per-step checks could not.
    if not _all_finite(solution):
        raise func.error(NON_FINITE, "the solution at an output time contains NaN or inf.")

    return tuple(solution)
