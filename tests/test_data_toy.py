"""Tests for the seeded toy sets and their mode statistics."""

import math

import pytest
import torch

from sparse_cnf.data.toy import TOY_DATASETS, make_toy, mode_statistics


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_same_seed_same_points(name):
    first, second = make_toy(name, 500, seed=3), make_toy(name, 500, seed=3)

    assert torch.equal(first.x, second.x)
    assert torch.equal(first.labels, second.labels)
    assert first.x.shape == (500, 2)
    assert first.x.dtype == torch.float32
    assert first.labels.dtype == torch.int64


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_other_seed_other_points(name):
    assert not torch.equal(make_toy(name, 500, seed=0).x, make_toy(name, 500, seed=1).x)


@pytest.mark.parametrize(
    ("name", "modes"),
    [("gaussians", 6), ("gaussians_spiral", 10), ("spirals", 2), ("8gaussians", 8), ("pinwheel", 5),
     ("checkerboard", 8), ("2spirals", 2), ("rings", 4), ("circles", 2), ("moons", 2)],
)
def test_toy_labels_cover_modes(name, modes):
    data = make_toy(name, 4000, seed=0)

    assert data.num_modes == modes
    assert set(data.labels.tolist()) == set(range(modes))
    assert data.mode_means.shape == (modes, 2)
    assert data.mode_covs.shape == (modes, 2, 2)


def test_swissroll_has_no_modes():
    data = make_toy("swissroll", 300, seed=0)

    assert bool((data.labels == -1).all())
    assert data.num_modes == 0
    assert data.mode_means is None
    assert data.mode_covs is None


def test_gaussians_mode_stats_match_definition():
    data = make_toy("gaussians", 60_000, seed=0)
    angles = 2 * math.pi * torch.arange(6, dtype=torch.float64) / 6
    centres = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)

    torch.testing.assert_close(data.mode_means.double(), centres, atol=0.03, rtol=0)
    stds = data.mode_covs.double().diagonal(dim1=1, dim2=2).sqrt()
    torch.testing.assert_close(stds, torch.full((6, 2), 0.5, dtype=torch.float64), atol=0.02, rtol=0)
    off_diagonal = data.mode_covs.double()[:, 0, 1]
    assert off_diagonal.abs().max() < 0.01


def test_gaussians_spiral_radius_and_std():
    data = make_toy("gaussians_spiral", 50_000, seed=0)
    radii = data.mode_means.double().norm(dim=1)
    stds = data.mode_covs.double().diagonal(dim1=1, dim2=2).sqrt().mean(dim=1)

    torch.testing.assert_close(radii, torch.linspace(4.0, 1.0, 10, dtype=torch.float64), atol=0.03, rtol=0)
    torch.testing.assert_close(stds, torch.linspace(0.3, 0.1, 10, dtype=torch.float64), atol=0.01, rtol=0)


def test_mode_statistics_known_answer():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [10.0, 10.0], [12.0, 10.0], [10.0, 12.0], [5.0, 5.0]],
                     dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, -1])
    means, covs = mode_statistics(x, labels, 2)
    expected_cov = torch.tensor([[4.0 / 3.0, -2.0 / 3.0], [-2.0 / 3.0, 4.0 / 3.0]], dtype=torch.float64)

    torch.testing.assert_close(means[0], torch.tensor([2.0 / 3.0, 2.0 / 3.0], dtype=torch.float64))
    torch.testing.assert_close(means[1], torch.tensor([32.0 / 3.0, 32.0 / 3.0], dtype=torch.float64))
    torch.testing.assert_close(covs[0], expected_cov)
    torch.testing.assert_close(covs[1], expected_cov)


def test_mode_statistics_too_few_points():
    x = torch.zeros(4, 2)
    labels = torch.tensor([0, 0, 1, 1])

    with pytest.raises(ValueError, match="increase the number of samples"):
        mode_statistics(x, labels, 2)


def test_make_toy_unknown_name():
    with pytest.raises(ValueError, match="gaussians_spiral"):
        make_toy("gausians", 10, seed=0)
