"""Tests of the divergence: exact against the Jacobian's trace, Hutchinson's estimate in the mean."""

import pytest
import torch

from sparse_cnf.flows.divergence import divergence_exact, divergence_hutchinson, sample_noise
from sparse_cnf.flows.fields import MLPField


@pytest.fixture
def field():
    torch.manual_seed(0)
    return MLPField(3, (16, 16), "softplus").double()


def jacobian_traces(field, t, z):
    traces = []
    for row in z:
        jac = torch.autograd.functional.jacobian(lambda v: field(t, v[None])[0], row)
        traces.append(torch.trace(jac))
    return torch.stack(traces)


def test_exact_equals_jacobian_trace(field):
    t = torch.tensor(0.4, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)

    div = divergence_exact(field(t, z), z)

    assert div.shape == (5,)
    assert torch.allclose(div, jacobian_traces(field, t, z.detach()), rtol=1e-12, atol=1e-12)


def test_exact_keeps_graph_for_training(field):
    t = torch.tensor(0.4, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)

    div = divergence_exact(field(t, z), z)

    assert div.requires_grad


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_hutchinson_mean_matches_exact(field, kind):
    # The mean of n draws at one point must lie within 5 standard errors of the exact value.
    # For a normal mean, a false failure has probability below 1e-6, and the draws are seeded.
    n = 20000
    t = torch.tensor(0.4, dtype=torch.float64)
    point = torch.randn(1, 3, dtype=torch.float64)
    z = point.expand(n, 3).clone().requires_grad_(True)
    noise = sample_noise(z, kind, torch.Generator().manual_seed(1))

    estimates = divergence_hutchinson(field(t, z), z, noise)
    single = point.clone().requires_grad_(True)
    exact = divergence_exact(field(t, single), single)[0]
    standard_error = estimates.std() / n**0.5

    assert abs(estimates.mean() - exact) < 5 * standard_error


def test_rademacher_noise_is_plus_minus_one():
    noise = sample_noise(torch.empty(1000, 4, dtype=torch.float64), "rademacher", torch.Generator().manual_seed(0))

    assert noise.dtype == torch.float64
    assert set(noise.unique().tolist()) == {-1.0, 1.0}


def test_gaussian_noise_follows_dtype():
    noise = sample_noise(torch.empty(10, 4, dtype=torch.float64), "gaussian")

    assert noise.dtype == torch.float64
    assert noise.shape == (10, 4)


def test_noise_generator_is_reproducible():
    like = torch.empty(10, 4)

    first = sample_noise(like, "gaussian", torch.Generator().manual_seed(3))
    second = sample_noise(like, "gaussian", torch.Generator().manual_seed(3))

    assert torch.equal(first, second)


def test_unknown_noise_lists_choices():
    with pytest.raises(ValueError, match="gaussian, rademacher; got 'uniform'"):
        sample_noise(torch.empty(2, 2), "uniform")


def test_input_without_grad_raises(field):
    z = torch.randn(2, 3, dtype=torch.float64)

    with pytest.raises(ValueError, match="must require grad"):
        divergence_exact(field(torch.tensor(0.0, dtype=torch.float64), z), z)


def test_field_without_state_dependence_has_zero_divergence():
    z = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    dz = torch.ones(4, 2, dtype=torch.float64) * z.sum().detach()

    assert torch.equal(divergence_exact(dz, z), torch.zeros(4, dtype=torch.float64))
    assert torch.equal(divergence_hutchinson(dz, z, torch.ones_like(z)), torch.zeros(4, dtype=torch.float64))
