import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torchdiffeq import odeint, odeint_adjoint

from sparse_cnf.analysis import hessian_stats
from sparse_cnf.flows.layers import MaskedLinear

DTYPE = torch.float64


class TinyField(nn.Module):
    """CNF dynamics on 2-D states with f = W2 tanh(W1 [t, z] + b1) + b2: 3 * 3 + 3 + 3 * 2 + 2 = 20 parameters."""

    def __init__(self):
        super().__init__()

        self.hidden = MaskedLinear(3, 3, dtype=DTYPE)
        self.output = MaskedLinear(3, 2, dtype=DTYPE)

    def velocity(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        time_column = t.expand(z.shape[0], 1)

        return self.output(torch.tanh(self.hidden(torch.cat([time_column, z], dim=1))))

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = state
        with torch.enable_grad():
            z = z if z.requires_grad else z.requires_grad_(True)
            dz = self.velocity(t, z)
            divergence = sum(
                torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(z.shape[1])
            )

        return dz, -divergence


class TinyFlow(nn.Module):
    """A flow z = phi(x) solved with fixed-step rk4, whose forward returns the mean Gaussian NLL with the log-det term."""

    def __init__(self, adjoint: bool = False):
        super().__init__()

        self.field = TinyField()
        self.adjoint = adjoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        times = torch.tensor([0.0, 1.0], dtype=DTYPE)
        state = (x, torch.zeros(x.shape[0], dtype=DTYPE))
        solve = odeint_adjoint if self.adjoint else odeint
        trajectory = solve(self.field, state, times, method="rk4", options={"step_size": 0.25})
        z, delta_logp = trajectory[0][-1], trajectory[1][-1]
        log_prob = -0.5 * (z**2).sum(1) - math.log(2 * math.pi) - delta_logp

        return -log_prob.mean()


def _data() -> torch.Tensor:
    return torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)


def _flow(seed: int = 0) -> TinyFlow:
    torch.manual_seed(seed)
    return TinyFlow()


def _reference_hessian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Return the dense Hessian over all parameters (flattened in named_parameters order) and the names."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for _, p in model.named_parameters()])

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(vector, [math.prod(s) for s in shapes])
        params = {name: piece.view(shape) for name, piece, shape in zip(names, pieces, shapes)}
        return functional_call(model, params, (x,))

    return torch.autograd.functional.hessian(loss_of, flat), names


@pytest.fixture(scope="module")
def reference():
    model = _flow()
    x = _data()
    matrix, _ = _reference_hessian(model, x)
    eigenvalues = torch.linalg.eigvalsh(matrix)

    return model, x, matrix, eigenvalues


def test_lanczos_matches_dense(reference):
    model, x, matrix, eigenvalues = reference
    stats = hessian_stats(model, lambda m: m(x), method="lanczos", eigsh_tol=1e-10)

    assert stats.num_coordinates == matrix.shape[0]
    assert stats.lambda_max == pytest.approx(eigenvalues[-1].item(), rel=1e-4)
    assert stats.lambda_min == pytest.approx(eigenvalues[0].item(), rel=1e-4)


def test_hutchinson_within_three_stderr(reference):
    model, x, matrix, _ = reference
    stats = hessian_stats(model, lambda m: m(x), method="lanczos", trace_rtol=1e-3)
    exact_trace = torch.trace(matrix).item()

    assert stats.trace_samples >= 10
    assert stats.trace_stderr > 0
    assert abs(stats.trace - exact_trace) <= 3 * stats.trace_stderr


def test_exact_mode_matches_dense(reference):
    model, x, matrix, eigenvalues = reference
    stats = hessian_stats(model, lambda m: m(x), method="exact")

    assert stats.method == "exact"
    assert stats.num_hvp == matrix.shape[0]
    assert stats.trace == pytest.approx(torch.trace(matrix).item(), rel=1e-6)
    assert np.allclose(stats.matrix, matrix.numpy(), rtol=1e-6, atol=1e-9)
    assert np.allclose(stats.eigenvalues, eigenvalues.numpy(), rtol=1e-6, atol=1e-9)


def test_masked_hessian_is_restriction():
    model = _flow()
    x = _data()
    with torch.no_grad():
        model.field.hidden.weight_mask[0, 1:] = False
        model.field.output.weight_mask[1, 0] = False
        model.field.hidden.weight.mul_(model.field.hidden.weight_mask)
        model.field.output.weight.mul_(model.field.output.weight_mask)
    full, names = _reference_hessian(model, x)

    keep, offset = [], 0
    for name, parameter in model.named_parameters():
        mask = model.get_buffer(name.removesuffix("weight") + "weight_mask") if name.endswith("weight") else None
        flags = mask.flatten() if mask is not None else torch.ones(parameter.numel(), dtype=torch.bool)
        keep.extend(offset + i for i in range(parameter.numel()) if flags[i])
        offset += parameter.numel()
    restricted = full[keep][:, keep]
    stats = hessian_stats(model, lambda m: m(x), method="exact")

    assert stats.num_coordinates == len(keep) == full.shape[0] - 3
    assert np.allclose(stats.matrix, restricted.numpy(), rtol=1e-6, atol=1e-9)


def test_frozen_parameter_excluded():
    model = _flow()
    x = _data()
    model.field.output.bias.requires_grad_(False)
    stats = hessian_stats(model, lambda m: m(x), method="exact")

    assert stats.num_coordinates == 20 - 2
    assert all(c.name != "field.output.bias" for c in stats.coordinates)


def test_same_seed_identical():
    model = _flow()
    x = _data()
    first = hessian_stats(model, lambda m: m(x), method="lanczos", seed=3)
    second = hessian_stats(model, lambda m: m(x), method="lanczos", seed=3)

    assert first.lambda_max == second.lambda_max
    assert first.lambda_min == second.lambda_min
    assert first.trace == second.trace
    assert first.trace_samples == second.trace_samples
    assert first.num_hvp == second.num_hvp


def test_random_loss_reproducible():
    # A loss that draws noise (like Hutchinson divergence) gets the same draw in every product.
    model = _flow()

    def noisy_loss(m: nn.Module) -> torch.Tensor:
        return m(torch.randn(8, 2, dtype=DTYPE))

    rng_before = torch.get_rng_state()
    first = hessian_stats(model, noisy_loss, method="lanczos", seed=1)
    second = hessian_stats(model, noisy_loss, method="lanczos", seed=1)

    assert first.lambda_max == second.lambda_max
    assert first.trace == second.trace
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_recompute_graph_same_answer():
    model = _flow()
    x = _data()
    retained = hessian_stats(model, lambda m: m(x), method="exact")
    recomputed = hessian_stats(model, lambda m: m(x), method="exact", recompute_graph=True)

    assert np.array_equal(retained.matrix, recomputed.matrix)


def test_unused_parameter_zero_block():
    model = _flow()
    x = _data()
    model.unused = nn.Parameter(torch.ones(3, dtype=DTYPE))

    with pytest.warns(UserWarning, match="does not reach"):
        stats = hessian_stats(model, lambda m: m(x), method="exact")
    block = next(c for c in stats.coordinates if c.name == "unused")
    rows = stats.matrix[block.offset : block.offset + 3]

    assert stats.unused_parameters == ("unused",)
    assert stats.num_coordinates == 20 + 3
    assert np.all(rows == 0)


def test_adjoint_solver_raises():
    torch.manual_seed(0)
    model = TinyFlow(adjoint=True)
    x = _data()

    with pytest.raises(RuntimeError, match="adjoint"):
        hessian_stats(model, lambda m: m(x), method="exact")


class NormalizedRegression(nn.Module):
    """Linear -> BatchNorm -> tanh -> masked Linear, with a squared-error loss."""

    def __init__(self):
        super().__init__()

        self.first = nn.Linear(3, 4, dtype=DTYPE)
        self.norm = nn.BatchNorm1d(4, dtype=DTYPE)
        self.second = MaskedLinear(4, 1, dtype=DTYPE)
        with torch.no_grad():
            self.second.weight_mask[0, 0] = False
            self.second.weight[0, 0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.norm(self.first(x))))


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict(keep_vars=True).items()}


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_buffers_and_mode_restored(mode):
    torch.manual_seed(0)
    model = NormalizedRegression()
    model.train()
    model.norm.eval()
    x = torch.randn(32, 3, dtype=DTYPE)
    y = torch.randn(32, 1, dtype=DTYPE)
    before = _state_copy(model)
    modes_seen = []

    def loss_fn(m: nn.Module) -> torch.Tensor:
        modes_seen.append(m.norm.training)
        return ((m(x) - y) ** 2).mean()

    stats = hessian_stats(model, loss_fn, mode=mode, method="exact")
    after = _state_copy(model)

    assert stats.mode == mode
    assert set(modes_seen) == {mode == "train"}
    assert model.training
    assert not model.norm.training
    for name, tensor in before.items():
        assert torch.equal(tensor.view(-1).view(torch.uint8), after[name].view(-1).view(torch.uint8)), name


def test_batchnorm_stats_move_in_train_mode():
    # Guards the test above: in train mode the loss really updates the running statistics.
    torch.manual_seed(0)
    model = NormalizedRegression()
    before = model.norm.running_mean.clone()
    model.train()
    model(torch.randn(8, 3, dtype=DTYPE))

    assert not torch.equal(before, model.norm.running_mean)


def _quadratic(diagonal: list[float]) -> tuple[nn.Module, callable]:
    module = nn.Module()
    module.theta = nn.Parameter(torch.linspace(-1, 1, len(diagonal), dtype=DTYPE))
    scale = torch.tensor(diagonal, dtype=DTYPE)

    return module, lambda m: 0.5 * (scale * m.theta**2).sum() + m.theta.sum()


def test_condition_numbers_known():
    model, loss_fn = _quadratic([-1.0, 0.0, 0.5, 2.0, 7.0])
    stats = hessian_stats(model, loss_fn, method="exact")

    assert stats.condition == pytest.approx(-7.0)
    assert stats.lambda_min_positive == pytest.approx(0.5)
    assert stats.condition_positive == pytest.approx(14.0)
    assert stats.condition_positive_note == ""


def test_condition_positive_nan_reason():
    model, loss_fn = _quadratic([-2.0, -1.0, 0.0, 1.0, 3.0, 4.0, 5.0, 6.0])
    stats = hessian_stats(model, loss_fn, method="lanczos", num_smallest=3)

    assert stats.lambda_min == pytest.approx(-2.0)
    assert math.isnan(stats.condition_positive)
    assert "num_smallest" in stats.condition_positive_note


def test_condition_positive_lanczos():
    model, loss_fn = _quadratic([-2.0, -1.0, 0.0, 1.0, 3.0, 4.0, 5.0, 6.0])
    stats = hessian_stats(model, loss_fn, method="lanczos", num_smallest=4)

    assert stats.lambda_min_positive == pytest.approx(1.0)
    assert stats.condition_positive == pytest.approx(6.0)


def test_density_quadrature_weights():
    model, loss_fn = _quadratic([-1.0, 0.5, 2.0, 3.0, 7.0, 9.0])
    stats = hessian_stats(model, loss_fn, method="exact", density_vectors=4, density_steps=6)
    grid = np.linspace(-5.0, 15.0, 4001)
    integral = np.trapezoid(stats.density.evaluate(grid, bandwidth=0.2), grid)

    assert len(stats.density.nodes) == 4
    assert all(w.sum() == pytest.approx(1.0) for w in stats.density.weights)
    assert np.allclose(stats.density.nodes[0], [-1.0, 0.5, 2.0, 3.0, 7.0, 9.0])
    assert integral == pytest.approx(1.0, abs=1e-6)


def test_metrics_dict_keys():
    model, loss_fn = _quadratic([1.0, 2.0, 3.0])
    metrics = hessian_stats(model, loss_fn).as_metrics(prefix="hessian_")

    assert metrics["hessian_lambda_max"] == pytest.approx(3.0)
    assert metrics["hessian_trace"] == pytest.approx(6.0)
    assert metrics["hessian_condition"] == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("option", "value"),
    [("method", "power"), ("mode", "test"), ("trace_rtol", 0.0), ("num_smallest", 0), ("seed", -1)],
)
def test_bad_option_raises(option, value):
    model, loss_fn = _quadratic([1.0, 2.0, 3.0])

    with pytest.raises(ValueError, match=option):
        hessian_stats(model, loss_fn, **{option: value})


def test_non_scalar_loss_raises():
    model, _ = _quadratic([1.0, 2.0, 3.0])

    with pytest.raises(ValueError, match="scalar"):
        hessian_stats(model, lambda m: m.theta**2)


def test_loss_without_graph_raises():
    model, loss_fn = _quadratic([1.0, 2.0, 3.0])

    def detached_loss(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return loss_fn(m)

    with pytest.raises(ValueError, match="no_grad"):
        hessian_stats(model, detached_loss)



class _NLLOf(nn.Module):
    """Mean NLL of a CNF as a module, so that `functional_call` can swap its parameters."""

    def __init__(self, cnf: nn.Module):
        super().__init__()

        self.cnf = cnf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.cnf.log_prob(x).mean()


@pytest.fixture(scope="module")
def pruned_cnf():
    from sparse_cnf.flows import build_cnf

    torch.manual_seed(0)
    cnf = build_cnf(2, "mlp", hidden=(4,), solver={"method": "rk4", "step_size": 0.25}).to(DTYPE)
    first, second = (module for module in cnf.modules() if isinstance(module, MaskedLinear))
    with torch.no_grad():
        first.weight_mask[0, :2] = False
        second.weight_mask[1, 3] = False
        for layer in (first, second):
            layer.weight.mul_(layer.weight_mask)
    x = _data()
    full, _ = _reference_hessian(_NLLOf(cnf), x)

    keep, offset = [], 0
    for name, parameter in cnf.named_parameters():
        module = cnf.get_submodule(name.rsplit(".", 1)[0])
        mask = module.weight_mask if name.endswith("weight") else torch.ones_like(parameter, dtype=torch.bool)
        keep.extend(offset + i for i in torch.nonzero(mask.flatten()).flatten().tolist())
        offset += parameter.numel()

    return cnf, x, full[keep][:, keep]


def test_cnf_exact_is_restriction(pruned_cnf):
    cnf, x, restricted = pruned_cnf
    stats = hessian_stats(cnf, lambda m: -m.log_prob(x).mean(), method="exact")

    assert stats.num_coordinates == sum(p.numel() for p in cnf.parameters()) - 3
    assert np.allclose(stats.matrix, restricted.numpy(), rtol=1e-6, atol=1e-9)
    assert stats.trace == pytest.approx(torch.trace(restricted).item(), rel=1e-6)


def test_cnf_lanczos_matches_dense(pruned_cnf):
    cnf, x, restricted = pruned_cnf
    eigenvalues = torch.linalg.eigvalsh(restricted)
    stats = hessian_stats(cnf, lambda m: -m.log_prob(x).mean(), method="lanczos", eigsh_tol=1e-10)

    assert stats.lambda_max == pytest.approx(eigenvalues[-1].item(), rel=1e-4)
    assert stats.lambda_min == pytest.approx(eigenvalues[0].item(), rel=1e-4)


def test_cnf_state_unchanged(pruned_cnf):
    cnf, x, _ = pruned_cnf
    cnf.train()
    before = _state_copy(cnf)
    hessian_stats(cnf, lambda m: -m.log_prob(x).mean(), method="exact")

    assert cnf.training
    for name, tensor in before.items():
        assert torch.equal(tensor.view(-1).view(torch.uint8), cnf.state_dict()[name].view(-1).view(torch.uint8)), name
