import math

import pytest
import torch

from sparse_cnf.metrics import (
    GoodSampleShare,
    good_sample_share,
    mode_distances,
    sample_good_share,
    threshold_label,
)

NUM_MODES = 6
STD = 0.5


def _circle_modes() -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.arange(NUM_MODES, dtype=torch.float64) * 2 * math.pi / NUM_MODES
    means = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    covs = (STD**2 * torch.eye(2, dtype=torch.float64)).expand(NUM_MODES, 2, 2).clone()

    return means, covs


def _mixture_samples(n: int, generator: torch.Generator) -> torch.Tensor:
    means, _ = _circle_modes()
    labels = torch.randint(NUM_MODES, (n,), generator=generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)

    return means[labels] + STD * noise


def test_mixture_matches_chi_two_tail():
    means, covs = _circle_modes()
    n = 40_000
    samples = _mixture_samples(n, torch.Generator().manual_seed(0))
    result = good_sample_share(samples, means, covs)

    for c in (1, 2, 3):
        expected = 100.0 * (1.0 - math.exp(-(c**2) / 2))
        sampling_error = 100.0 * math.sqrt(expected / 100 * (1 - expected / 100) / n)
        assert abs(result[f"good_{c}std"] - expected) < 4 * sampling_error + 1e-9, c
    assert result["good_2std"] == pytest.approx(86.5, abs=1.0)
    assert result["good_3std"] == pytest.approx(98.9, abs=0.3)


def test_mixture_reaches_every_mode():
    means, covs = _circle_modes()
    samples = _mixture_samples(5_000, torch.Generator().manual_seed(1))
    result = good_sample_share(samples, means, covs)

    for c in (1, 2, 3, 5):
        assert result[f"modes_{c}std"] == NUM_MODES, c


def test_collapsed_samples_reach_one_mode():
    means, covs = _circle_modes()
    samples = means[2].expand(100, 2) + 0.01 * torch.randn(100, 2, dtype=torch.float64)
    result = good_sample_share(samples, means, covs)

    assert result["modes_2std"] == 1
    assert result["good_2std"] == 100.0


def test_anisotropic_distance_by_hand():
    means = torch.zeros(1, 2, dtype=torch.float64)
    covs = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))[None]
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    distance = mode_distances(x, means, covs)[:, 0]

    # The std along (2, 0) is 2 and along (0, 2) is 1. Along (1, 1), u^T S u = 5, so d = 2 / sqrt(5).
    assert distance[0].item() == pytest.approx(1.0)
    assert distance[1].item() == pytest.approx(2.0)
    assert distance[2].item() == pytest.approx(2.0 / math.sqrt(5.0))


def test_anisotropic_differs_from_mahalanobis():
    means = torch.zeros(1, 2, dtype=torch.float64)
    covs = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))[None]
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    mahalanobis = math.sqrt(1.0 / 4.0 + 1.0)

    assert mode_distances(x, means, covs).item() != pytest.approx(mahalanobis)


def test_distance_at_mean_is_zero():
    means, covs = _circle_modes()
    distance = mode_distances(means, means, covs)

    assert torch.all(distance.diagonal() == 0)


def test_zero_variance_direction_is_inf():
    means = torch.zeros(1, 2, dtype=torch.float64)
    covs = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))[None]
    x = torch.tensor([[0.0, 1.0]], dtype=torch.float64)

    assert math.isinf(mode_distances(x, means, covs).item())


def test_non_finite_sample_warns():
    means, covs = _circle_modes()
    samples = torch.cat([means[:1], torch.tensor([[float("nan"), 0.0]], dtype=torch.float64)])

    with pytest.warns(UserWarning, match="not finite"):
        result = good_sample_share(samples, means, covs)
    assert result["good_1std"] == 50.0


def test_threshold_labels():
    assert threshold_label(2) == "2"
    assert threshold_label(2.0) == "2"
    assert threshold_label(2.5) == "2p5"


def test_custom_thresholds_keys():
    means, covs = _circle_modes()
    result = good_sample_share(means, means, covs, thresholds=(0.5, 2.5))

    assert set(result) == {"good_0p5std", "good_2p5std", "modes_0p5std", "modes_2p5std"}


@pytest.mark.parametrize("thresholds", [(), (0.0,), (-1.0,), (2, 2.0), (math.nan,)])
def test_bad_thresholds_raise(thresholds):
    means, covs = _circle_modes()

    with pytest.raises(ValueError, match="threshold"):
        good_sample_share(means, means, covs, thresholds=thresholds)


def test_mismatched_covs_raise():
    means, covs = _circle_modes()

    with pytest.raises(ValueError, match="covs"):
        good_sample_share(means, means, covs[:3])


def test_metric_matches_function():
    means, covs = _circle_modes()
    samples = _mixture_samples(3_000, torch.Generator().manual_seed(2))
    metric = GoodSampleShare(means, covs)
    for batch in samples.split(700):
        metric.update(batch)

    assert metric.compute() == good_sample_share(samples, means, covs)


def test_metric_merge_matches_union():
    means, covs = _circle_modes()
    samples = _mixture_samples(1_000, torch.Generator().manual_seed(3))
    rank0, rank1 = GoodSampleShare(means, covs), GoodSampleShare(means, covs)
    rank0.update(samples[:400])
    rank1.update(samples[400:])
    rank0.merge_state(rank1)

    assert rank0.compute() == good_sample_share(samples, means, covs)


def test_metric_compute_before_update_raises():
    means, covs = _circle_modes()

    metric = GoodSampleShare(means, covs)

    # torchmetrics warns first, then compute raises.
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError, match="update"):
        metric.compute()


def test_sampled_sets_mean_and_std():
    means, covs = _circle_modes()
    generator = torch.Generator().manual_seed(4)
    requested = []

    def sample_fn(n: int) -> torch.Tensor:
        requested.append(n)
        return _mixture_samples(n, generator)

    summary = sample_good_share(sample_fn, means, covs, num_samples=5_000, num_sets=3, batch_size=2_000)

    assert requested == [2_000, 2_000, 1_000] * 3
    assert summary.mean["good_2std"] == pytest.approx(86.5, abs=1.5)
    assert 0 < summary.std["good_2std"] < 1.5
    assert summary.mean["modes_2std"] == NUM_MODES
    assert len(summary.per_set) == 3


def test_single_set_std_is_nan():
    means, covs = _circle_modes()
    summary = sample_good_share(lambda n: means[torch.arange(n) % NUM_MODES], means, covs, num_samples=12, num_sets=1)

    assert math.isnan(summary.std["good_1std"])
    assert summary.mean["good_1std"] == 100.0


def test_sample_fn_wrong_shape_raises():
    means, covs = _circle_modes()

    with pytest.raises(ValueError, match="sample_fn"):
        sample_good_share(lambda n: torch.zeros(n + 1, 2), means, covs, num_samples=10)
