"""Tests of the solver options and of solve failures that name their cause."""

import copy
import pickle

import pytest
import torch
from torchdiffeq._impl.odeint import SOLVERS

from sparse_cnf.flows.solver import (
    ADAPTIVE_METHODS,
    FIXED_GRID_METHODS,
    METHODS,
    MonitoredDynamics,
    SolveError,
    SolverOptions,
    odeint_checked,
)


class Square(MonitoredDynamics):
    """dy/dt = y**2, whose solution 1 / (1 - t) from y(0) = 1 blows up at t = 1."""

    def forward(self, t, state):
        self.count_evaluation()
        dy = state[0] ** 2
        self.check_finite(t, (state[0], dy), "the state or its derivative")
        return (dy,)


def solve_square(options: SolverOptions, end: float = 2.0) -> tuple[torch.Tensor, ...]:
    times = torch.tensor([0.0, end], dtype=torch.float64)
    return odeint_checked(Square(options, False), (torch.ones(1, dtype=torch.float64),), times, ())


def test_methods_are_torchdiffeq_solvers():
    assert METHODS == tuple(SOLVERS)
    assert "dopri5" in ADAPTIVE_METHODS
    assert "rk4" in FIXED_GRID_METHODS


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_every_method_is_accepted(method):
    step_size = 0.1 if method in FIXED_GRID_METHODS else None

    options = SolverOptions.from_mapping({"method": method, "step_size": step_size})

    assert options.method == method


def test_defaults():
    options = SolverOptions()

    assert options.method == "dopri5"
    assert options.rtol == 1e-5
    assert options.atol == 1e-5
    assert options.adjoint is False


def test_from_mapping_leaves_input_unchanged():
    mapping = {"method": "rk4", "step_size": 0.05, "adjoint": True, "adjoint_method": "dopri5"}
    before = copy.deepcopy(mapping)

    options = SolverOptions.from_mapping(mapping)
    options.odeint_kwargs()

    assert mapping == before


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown solver option.*rtoll.*valid options are method, rtol, atol"):
        SolverOptions.from_mapping({"rtoll": 1e-5})


def test_unknown_method_lists_methods():
    with pytest.raises(ValueError, match="`solver.method` must be one of dopri8, dopri5.*got 'dopri55'"):
        SolverOptions(method="dopri55")


@pytest.mark.parametrize("key", ["rtol", "atol", "adjoint_rtol", "adjoint_atol"])
@pytest.mark.parametrize("value", [0.0, -1e-5, float("nan")])
def test_tolerance_must_be_positive(key, value):
    with pytest.raises(ValueError, match=f"`solver.{key}` must be a finite number > 0"):
        SolverOptions.from_mapping({key: value})


def test_adjoint_method_cannot_be_scipy():
    with pytest.raises(ValueError, match="adjoint_method"):
        SolverOptions(adjoint=True, adjoint_method="scipy_solver")


def test_fixed_grid_needs_step_size():
    with pytest.raises(ValueError, match="`solver.step_size` is required by the fixed-grid method 'rk4'"):
        SolverOptions(method="rk4")


def test_fixed_grid_adjoint_needs_step_size():
    with pytest.raises(ValueError, match="step_size` is required by the fixed-grid method 'euler'"):
        SolverOptions(adjoint=True, adjoint_method="euler")


def test_step_size_rejected_for_adaptive():
    with pytest.raises(ValueError, match="step_size` applies only to fixed-grid methods"):
        SolverOptions(method="dopri5", step_size=0.1)


def test_first_step_rejected_for_fixed_grid():
    with pytest.raises(ValueError, match="first_step` applies only to adaptive methods"):
        SolverOptions(method="rk4", step_size=0.1, first_step=0.01)


def test_max_num_steps_must_be_positive_int():
    with pytest.raises(ValueError, match="max_num_steps` must be an int >= 1"):
        SolverOptions(max_num_steps=0)


def test_adjoint_defaults_follow_forward():
    kwargs = SolverOptions(adjoint=True, rtol=1e-4, atol=1e-6).odeint_kwargs()

    assert kwargs["adjoint_method"] == "dopri5"
    assert kwargs["adjoint_rtol"] == 1e-4
    assert kwargs["adjoint_atol"] == 1e-6


def test_adjoint_options_are_separate():
    kwargs = SolverOptions(adjoint=True, adjoint_method="rk4", step_size=0.1, adjoint_rtol=1e-3).odeint_kwargs()

    assert kwargs["adjoint_options"] == {"step_size": 0.1}
    assert kwargs["adjoint_rtol"] == 1e-3
    assert kwargs["options"] == {"min_step": 0.0}


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        SolverOptions().rtol = 1.0


def test_replace_validates():
    with pytest.raises(ValueError, match="rtol"):
        SolverOptions().replace(rtol=-1.0)


def test_solve_matches_known_answer():
    solution = solve_square(SolverOptions(rtol=1e-10, atol=1e-10), end=0.5)

    assert torch.allclose(solution[0][-1], torch.tensor([2.0], dtype=torch.float64), rtol=1e-8)


def test_blow_up_raises_step_underflow():
    with pytest.raises(SolveError) as info:
        solve_square(SolverOptions())

    assert info.value.kind == "step size underflow"
    assert info.value.option == "min_step"
    assert info.value.t == pytest.approx(1.0, abs=1e-3)
    assert info.value.step_size < 1e-10
    assert info.value.nfe > 0
    assert "min_step" in str(info.value)


def test_blow_up_with_min_step_raises_non_finite():
    with pytest.raises(SolveError) as info:
        solve_square(SolverOptions(min_step=1e-6))

    assert info.value.kind == "non-finite state"
    assert info.value.t == pytest.approx(1.0, abs=1e-3)
    assert "rtol" in info.value.option


def test_step_limit_raises():
    with pytest.raises(SolveError) as info:
        solve_square(SolverOptions(max_num_steps=5))

    assert info.value.kind == "step limit"
    assert info.value.option == "max_num_steps"
    assert "max_num_steps=5" in str(info.value)


def test_decreasing_solve_reports_real_time():
    times = torch.tensor([0.0, -2.0], dtype=torch.float64)
    state = (-torch.ones(1, dtype=torch.float64),)

    with pytest.raises(SolveError) as info:
        odeint_checked(Square(SolverOptions(), True), state, times, ())

    assert info.value.t == pytest.approx(-1.0, abs=1e-3)


def test_fixed_grid_non_finite_raises():
    with pytest.raises(SolveError) as info:
        solve_square(SolverOptions(method="rk4", step_size=0.25))

    assert info.value.kind == "non-finite state"


def test_solve_error_pickles():
    error = SolveError("step limit", 0.5, 0.01, 42, "forward", "max_num_steps=3.")

    restored = pickle.loads(pickle.dumps(error))

    assert str(restored) == str(error)
    assert restored.nfe == 42


def test_scipy_solver_evaluates_without_gradient():
    with torch.no_grad():
        solution = solve_square(SolverOptions(method="scipy_solver", rtol=1e-8, atol=1e-8), end=0.5)

    assert solution[0][-1].item() == pytest.approx(2.0, rel=1e-6)


def test_scipy_solver_rejects_gradient():
    options = SolverOptions(method="scipy_solver")
    state = (torch.ones(1, dtype=torch.float64, requires_grad=True),)
    times = torch.tensor([0.0, 0.5], dtype=torch.float64)

    with pytest.raises(ValueError, match="gives no gradients"):
        odeint_checked(Square(options, False), state, times, ())
