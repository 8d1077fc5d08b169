"""Tests of CNF blocks and stacks: known log-densities, directions, times, adjoint, NFE and failures."""

import copy

import pytest
import torch
from torch import nn

import sparse_cnf.flows.cnf as cnf_module
from sparse_cnf.flows.cnf import CNF, CNFBlock, build_cnf, standard_normal_log_prob
from sparse_cnf.flows.fields import MLPField
from sparse_cnf.flows.solver import SolveError, SolverOptions

F64 = torch.float64
TIGHT = {"rtol": 1e-8, "atol": 1e-8}


class LinearField(nn.Module):
    """f(t, z) = z A^T, so z(T) = expm(A T) z(0) and log|det| = tr(A) T."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()

        self.matrix = nn.Parameter(matrix)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z @ self.matrix.T


class NaNAfter(nn.Module):
    """A small MLP field whose output turns NaN once t passes `start`."""

    def __init__(self, start: float):
        super().__init__()

        self.inner = MLPField(2, (8,))
        self.start = start

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = self.inner(t, z)
        return out * torch.nan if float(t.detach()) > self.start else out


def small_cnf(seed: int = 0, **kwargs) -> CNF:
    torch.manual_seed(seed)
    kwargs = {"hidden": (16, 16), "solver": TIGHT, **kwargs}
    return build_cnf(2, **kwargs).to(F64)


def points(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_gradients_close(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    # The adjoint solves a different ODE backwards, so its gradient matches direct
    # backpropagation only to solver tolerance: 1e-5 of the largest entry at rtol=atol=1e-8.
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        error = (actual[name] - grad).abs().max()
        assert error <= 1e-5 * grad.abs().max(), name


# Construction.


@pytest.mark.parametrize(
    ("dim", "hidden", "blocks", "activation", "expected"),
    [
        (6, (60, 60, 60), 5, "tanh", 43_325),
        (8, (160, 160, 160), 5, "tanh", 278_565),
        (43, (860, 860), 1, "softplus", 820_613),
    ],
)
def test_ffjord_preset_parameter_counts(dim, hidden, blocks, activation, expected):
    model = build_cnf(dim, "concatsquash", hidden, activation, num_blocks=blocks, learnable_T=True)

    assert sum(p.numel() for p in model.parameters()) == expected


def test_learnable_T_is_one_parameter():
    model = build_cnf(2, hidden=(4,), learnable_T=True, T=0.5)

    assert isinstance(model.blocks[0].T, nn.Parameter)
    assert model.blocks[0].T.item() == 0.5


def test_fixed_T_is_buffer():
    model = build_cnf(2, hidden=(4,), T=0.5)

    assert "blocks.0.T" in dict(model.named_buffers())


def test_unknown_divergence_lists_choices():
    with pytest.raises(ValueError, match="exact, hutchinson; got 'trace'"):
        build_cnf(2, hidden=(4,), divergence="trace")


def test_invalid_T_raises():
    with pytest.raises(ValueError, match="`T` must be a finite number > 0"):
        build_cnf(2, hidden=(4,), T=0.0)


def test_set_solver_leaves_mapping_unchanged():
    model = small_cnf()
    mapping = {"method": "rk4", "step_size": 0.1}

    model.set_solver(mapping)

    assert mapping == {"method": "rk4", "step_size": 0.1}
    assert all(block.solver.method == "rk4" for block in model.blocks)


# Known answers.


def test_log_prob_matches_slogdet_through_solver():
    model = small_cnf()
    x = points(3)

    log_prob = model.log_prob(x)
    for i in range(3):
        jacobian = torch.autograd.functional.jacobian(lambda v: model(v[None])[0][0], x[i])
        z = model(x[i : i + 1])[0]
        expected = standard_normal_log_prob(z)[0] + torch.linalg.slogdet(jacobian).logabsdet
        assert log_prob[i].item() == pytest.approx(expected.item(), abs=1e-6)


def test_forward_then_inverse_returns_x():
    model = small_cnf(num_blocks=2)
    x = points()

    z, delta_forward = model(x)
    x_back, delta_reverse = model.inverse(z)

    assert torch.allclose(x_back, x, atol=1e-6)
    assert torch.allclose(delta_reverse, -delta_forward, atol=1e-6)


def test_linear_field_log_det_is_trace_times_T():
    matrix = torch.tensor([[-0.5, 1.2], [0.3, 0.8]], dtype=F64)
    block = CNFBlock(LinearField(matrix.clone()), T=0.7, solver=TIGHT).to(F64)
    model = CNF([block], 2)
    x = points()

    z, log_det = model(x)

    assert torch.allclose(log_det, torch.full((4,), 0.3 * 0.7, dtype=F64), atol=1e-7)
    assert torch.allclose(z, x @ torch.linalg.matrix_exp(matrix * 0.7).T, atol=1e-7)


def test_linear_field_hutchinson_is_unbiased_per_draw():
    # For a linear field e^T A e has mean tr(A). The solve's estimate is that, times T.
    matrix = torch.tensor([[-0.5, 1.2], [0.3, 0.8]], dtype=F64)
    block = CNFBlock(LinearField(matrix.clone()), T=0.7, divergence="hutchinson", solver=TIGHT).to(F64)
    x = torch.zeros(20000, 2, dtype=F64)

    _, log_det = block(x, generator=torch.Generator().manual_seed(0))
    standard_error = log_det.std() / 20000**0.5

    assert abs(log_det.mean() - 0.3 * 0.7) < 5 * standard_error


# Densities and samples at times t.


def test_log_prob_at_zero_equals_log_prob():
    model = small_cnf(num_blocks=2)
    x = points()

    assert torch.allclose(model.log_prob_at(x, [0.0])[0], model.log_prob(x), atol=1e-12)


def test_log_prob_at_end_is_base_density():
    model = small_cnf(num_blocks=2, T=0.5)
    x = points()

    assert torch.equal(model.log_prob_at(x, [1.0])[0], standard_normal_log_prob(x))


def test_log_prob_at_ignores_extra_times():
    model = small_cnf(num_blocks=2, T=0.5)
    x = points()

    alone = model.log_prob_at(x, [0.3])[0]
    among = model.log_prob_at(x, [0.1, 0.3, 0.5, 0.9])[1]

    assert torch.allclose(alone, among, atol=1e-12)


def test_trajectory_ignores_extra_times():
    model = small_cnf(num_blocks=2, T=0.5)
    x = points()

    states_alone, log_prob_alone = model.trajectory(x, [0.3])
    states_among, log_prob_among = model.trajectory(x, [0.1, 0.3, 0.5, 0.75, 1.0])

    assert torch.allclose(states_alone[0], states_among[1], atol=1e-12)
    assert torch.allclose(log_prob_alone[0], log_prob_among[1], atol=1e-12)


def test_trajectory_density_matches_log_prob_at():
    model = small_cnf(num_blocks=2, T=0.5)
    x = points()
    times = [0.0, 0.3, 0.5, 0.8, 1.0]

    states, log_probs = model.trajectory(x, times)

    for k, t in enumerate(times):
        expected = model.log_prob_at(states[k], [t])[0]
        assert torch.allclose(log_probs[k], expected, atol=1e-6), f"t={t}"


def test_trajectory_ends_match_forward():
    model = small_cnf(num_blocks=2, T=0.5)
    x = points()

    states, log_probs = model.trajectory(x, [1.0, 0.0])

    assert torch.allclose(states[0], model(x)[0], atol=1e-12)
    assert torch.equal(states[1], x)
    assert torch.allclose(log_probs[1], model.log_prob(x), atol=1e-12)


def test_sample_at_zero_equals_sample():
    model = small_cnf(num_blocks=2, T=0.5)

    samples = model.sample(5, generator=torch.Generator().manual_seed(4))
    path = model.sample_at(5, [1.0, 0.5, 0.0], generator=torch.Generator().manual_seed(4))

    assert path.shape == (3, 5, 2)
    assert torch.allclose(path[2], samples, atol=1e-12)
    assert torch.equal(path[0], torch.randn(5, 2, generator=torch.Generator().manual_seed(4), dtype=F64))


def test_sample_inverts_forward():
    model = small_cnf()
    samples = model.sample(5, generator=torch.Generator().manual_seed(4))

    z, _ = model(samples)

    assert torch.allclose(z, torch.randn(5, 2, generator=torch.Generator().manual_seed(4), dtype=F64), atol=1e-6)


def test_time_outside_span_raises():
    model = small_cnf(T=0.5)

    with pytest.raises(ValueError, match=r"must lie in \[0, 0.5\]; got 0.7"):
        model.log_prob_at(points(), [0.7])


# Gradients and NFE.


def test_adjoint_gradients_match_direct():
    direct = small_cnf(num_blocks=2, learnable_T=True, T=0.5)
    adjoint = copy.deepcopy(direct)
    adjoint.set_solver({**TIGHT, "adjoint": True})
    x = points(8)

    loss_direct = -direct.log_prob(x).mean()
    loss_direct.backward()
    loss_adjoint = -adjoint.log_prob(x).mean()
    loss_adjoint.backward()

    assert loss_adjoint.item() == pytest.approx(loss_direct.item(), abs=1e-9)
    assert "blocks.0.T" in gradients(direct)
    assert_gradients_close(gradients(direct), gradients(adjoint))


def test_nfe_grows_when_rtol_tightens():
    model = small_cnf()
    x = points()
    counts = []
    for rtol in (1e-6, 1e-8, 1e-10):
        model.reset_nfe()
        model.set_solver({"rtol": rtol, "atol": 1e-12})
        model.log_prob(x)
        counts.append(model.nfe_forward)

    assert counts[0] < counts[1]
    assert counts[1] < counts[2]


def test_nfe_counts_direct_backward():
    model = small_cnf()
    loss = -model.log_prob(points()).mean()

    assert model.nfe_forward > 0
    assert model.nfe_backward == 0
    loss.backward()
    assert 0 < model.nfe_backward <= model.nfe_forward


def test_nfe_counts_adjoint_backward():
    model = small_cnf(solver={**TIGHT, "adjoint": True})
    loss = -model.log_prob(points()).mean()

    assert model.nfe_backward == 0
    loss.backward()
    assert model.nfe_backward > 0


def test_reset_nfe():
    model = small_cnf()
    model.log_prob(points())

    model.reset_nfe()

    assert model.nfe_forward == 0
    assert model.nfe_backward == 0


# Failure cases.


def test_nan_field_raises_solve_error():
    block = CNFBlock(NaNAfter(0.3), solver={"rtol": 1e-5, "atol": 1e-5})
    model = CNF([block], 2)

    with pytest.raises(SolveError) as info:
        model.log_prob(torch.randn(2, 2))

    assert info.value.kind == "non-finite state"
    assert info.value.t > 0.3
    assert info.value.step_size > 0
    assert info.value.nfe > 0
    assert "rtol" in str(info.value)


def test_nan_field_with_fixed_grid_raises():
    block = CNFBlock(NaNAfter(0.3), solver={"method": "euler", "step_size": 0.1})

    with pytest.raises(SolveError, match="non-finite state"):
        CNF([block], 2).log_prob(torch.randn(2, 2))


def test_stiff_field_hits_step_limit():
    torch.manual_seed(0)
    field = MLPField(2, (8,))
    with torch.no_grad():
        for layer in field.layers:
            layer.weight.mul_(30.0)
    model = CNF([CNFBlock(field, solver={"max_num_steps": 20})], 2)

    with pytest.raises(SolveError) as info:
        model.log_prob(torch.randn(2, 2))

    assert info.value.kind == "step limit"
    assert "max_num_steps" in str(info.value)


def test_adjoint_backward_step_limit_raises():
    # Tolerances tight enough that the backward solve needs more steps than allowed, while
    # the forward solve, with looser ones, fits in the limit.
    model = small_cnf(solver={"rtol": 1e-3, "atol": 1e-3, "adjoint": True, "adjoint_rtol": 1e-12,
                              "adjoint_atol": 1e-12, "max_num_steps": 12})
    loss = -model.log_prob(points()).mean()

    with pytest.raises(SolveError) as info:
        loss.backward()

    assert info.value.kind == "step limit"
    assert info.value.phase == "adjoint backward"
    assert 0.0 <= info.value.t <= 1.0


def test_hutchinson_noise_drawn_once_per_solve(monkeypatch):
    draws = []
    original = cnf_module.sample_noise

    def counting(*args, **kwargs):
        noise = original(*args, **kwargs)
        draws.append(noise)
        return noise

    monkeypatch.setattr(cnf_module, "sample_noise", counting)
    model = small_cnf(divergence="hutchinson", noise="rademacher")
    block = model.blocks[0]
    x = points()

    z_drawn, log_det_drawn = block(x, generator=torch.Generator().manual_seed(0))
    nfe_drawn = block.nfe_forward
    block.reset_nfe()
    z_given, log_det_given = block(x, noise=draws[0].clone())

    assert len(draws) == 1
    assert nfe_drawn > 6
    assert block.nfe_forward == nfe_drawn
    assert torch.equal(z_given, z_drawn)
    assert torch.equal(log_det_given, log_det_drawn)


def test_per_sample_end_times_raise():
    with pytest.raises(ValueError, match="Per-sample time spans are not supported"):
        CNFBlock(MLPField(2, (4,)), T=torch.tensor([0.5, 1.0]))


def test_per_sample_times_raise():
    model = small_cnf()
    x = points()

    with pytest.raises(ValueError, match="Per-sample times are not supported"):
        model.log_prob_at(x, torch.rand(4, 1, dtype=F64))


def test_adjoint_with_frozen_and_masked_parameters():
    direct = small_cnf(num_blocks=1)
    field = direct.blocks[0].field
    field.layers[1].bias.requires_grad_(False)
    field.layers[0].weight_mask[:8] = False
    with torch.no_grad():
        field.layers[0].weight[:8] = 0.0
    adjoint = copy.deepcopy(direct)
    adjoint.set_solver({**TIGHT, "adjoint": True})
    x = points(8)

    loss_direct = -direct.log_prob(x).mean()
    loss_direct.backward()
    loss_adjoint = -adjoint.log_prob(x).mean()
    loss_adjoint.backward()

    assert loss_adjoint.item() == pytest.approx(loss_direct.item(), abs=1e-9)
    assert adjoint.blocks[0].field.layers[1].bias.grad is None
    assert torch.all(adjoint.blocks[0].field.layers[0].weight.grad[:8] == 0)
    assert torch.all(direct.blocks[0].field.layers[0].weight.grad[:8] == 0)
    assert_gradients_close(gradients(direct), gradients(adjoint))


def test_float64_everywhere():
    model = small_cnf(divergence="hutchinson")
    x = points()

    assert model.log_prob(x).dtype == F64
    assert model.sample(3).dtype == F64
    assert model.inverse(x)[0].dtype == F64
    assert model.log_prob_at(x, [0.5]).dtype == F64
    assert model.sample_at(3, [0.5]).dtype == F64


def test_float32_agrees_with_float64():
    model64 = small_cnf(solver={"rtol": 1e-6, "atol": 1e-6})
    model32 = copy.deepcopy(model64).to(torch.float32)
    x = points()

    log_prob64 = model64.log_prob(x)
    log_prob32 = model32.log_prob(x.float())

    assert log_prob32.dtype == torch.float32
    assert torch.allclose(log_prob32.double(), log_prob64, rtol=1e-4, atol=1e-4)


def test_dtype_mismatch_raises():
    model = small_cnf()

    with pytest.raises(TypeError, match="has dtype torch.float32 but the model is in torch.float64"):
        model.log_prob(torch.randn(3, 2))
