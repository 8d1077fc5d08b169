"""Mode-collapse metrics: share of samples near a data mode and the number of modes reached."""

__all__ = [
    "GoodSampleShare",
    "SampleSetSummary",
    "good_sample_share",
    "mode_distances",
    "sample_good_share",
    "threshold_label",
]

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

DEFAULT_THRESHOLDS = (1.0, 2.0, 3.0, 5.0)


def threshold_label(c: float) -> str:
    """Format a threshold for a metric key: 2 -> "2", 2.5 -> "2p5" (no dot, so keys stay flat)."""
    return f"{float(c):g}".replace(".", "p")


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(c) for c in thresholds)
    if not values:
        raise ValueError("`thresholds` must contain at least one positive number, such as (1, 2, 3, 5); got ()")
    for c in values:
        if not math.isfinite(c) or c <= 0:
            raise ValueError(f"every threshold must be positive and finite; got {c!r} in {tuple(thresholds)!r}")
    labels = [threshold_label(c) for c in values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"`thresholds` must be distinct; got {tuple(thresholds)!r}")

    return values


def _check_modes(means: Tensor, covs: Tensor) -> None:
    if means.dim() != 2 or means.shape[0] < 1:
        raise ValueError(f"`means` must have shape (K, D) with K >= 1; got {tuple(means.shape)}")
    num_modes, dim = means.shape
    if covs.shape != (num_modes, dim, dim):
        raise ValueError(
            f"`covs` must have shape (K, D, D) = {(num_modes, dim, dim)} to match `means`; got {tuple(covs.shape)}"
        )
    if not (torch.isfinite(means).all() and torch.isfinite(covs).all()):
        raise ValueError("`means` and `covs` must be finite; recompute them from the labelled training points")
    if not torch.allclose(covs, covs.transpose(1, 2), rtol=1e-5, atol=1e-8):
        raise ValueError("`covs` must be symmetric covariance matrices; got a non-symmetric (K, D, D) tensor")


def mode_distances(x: Tensor, means: Tensor, covs: Tensor) -> Tensor:
    """Compute the distance of every sample to every mode in units of that mode's std along it.

    For u = x - mu_k, the mode's standard deviation along u is
    sigma_k(u) = sqrt(u^T Sigma_k u) / ||u||, and the distance is
    d_k = ||u|| / sigma_k(u) = ||u||^2 / sqrt(u^T Sigma_k u). For an isotropic component with
    std s this is ||u|| / s. Note that it differs from the Mahalanobis distance when Sigma_k is
    anisotropic. A sample exactly at the mean (u = 0) has distance 0. A direction with zero
    variance (u^T Sigma_k u = 0, u != 0) gives distance inf, and so does a non-finite sample.

    Args:
        x: `(N, D)` samples.
        means: `(K, D)` mode means.
        covs: `(K, D, D)` symmetric positive semi-definite mode covariances.

    Returns:
        `(N, K)` float64 distances on the device of `x`.

    Raises:
        ValueError: if the shapes do not match or `means`/`covs` are not finite and symmetric.
    """
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"samples `x` must have shape (N, D); got {tuple(x.shape)}")
    means = torch.as_tensor(means).to(device=x.device, dtype=torch.float64)
    covs = torch.as_tensor(covs).to(device=x.device, dtype=torch.float64)
    _check_modes(means, covs)
    if x.shape[1] != means.shape[1]:
        raise ValueError(f"samples have dimension {x.shape[1]} but the modes have dimension {means.shape[1]}")

    u = x.detach().to(torch.float64)[:, None, :] - means[None, :, :]
    squared_norm = (u * u).sum(-1)
    variance_along_u = torch.einsum("nkd,kde,nke->nk", u, covs, u).clamp_min(0.0)
    distance = squared_norm / variance_along_u.sqrt()

    distance = torch.where(squared_norm == 0, torch.zeros_like(distance), distance)
    distance = torch.where(torch.isnan(distance), torch.full_like(distance, math.inf), distance)

    return distance


def _count_good(distance: Tensor, thresholds: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """Return `(C,)` good-sample counts and `(C, K)` per-mode counts of samples within each threshold."""
    limits = torch.tensor(thresholds, dtype=distance.dtype, device=distance.device)
    within = distance[None, :, :] <= limits[:, None, None]

    return within.any(-1).sum(-1), within.sum(1)


def _shares_from_counts(
    good: Tensor, per_mode: Tensor, total: int, thresholds: tuple[float, ...]
) -> dict[str, float]:
    result = {}
    for i, c in enumerate(thresholds):
        result[f"good_{threshold_label(c)}std"] = 100.0 * float(good[i]) / total
    for i, c in enumerate(thresholds):
        result[f"modes_{threshold_label(c)}std"] = float((per_mode[i] > 0).sum())

    return result


def _warn_non_finite(x: Tensor) -> None:
    bad = int((~torch.isfinite(x)).any(-1).sum())
    if bad:
        warnings.warn(
            f"{bad} of {x.shape[0]} samples are not finite; they count as not good at every threshold",
            stacklevel=3,
        )


def good_sample_share(
    samples: Tensor,
    means: Tensor,
    covs: Tensor,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, float]:
    """Measure the share of good samples and the number of modes reached at each threshold.

    A sample is good at threshold c when its distance to the nearest mode, as defined in
    `mode_distances`, is at most c. A mode is reached at c when at least one sample lies within
    distance c of it. Samples drawn from an isotropic 2-D mixture itself give
    1 - exp(-c^2 / 2) good samples: 86.5 % at c = 2 and 98.9 % at c = 3.

    References:
        Sparse Flows: Pruning Continuous-depth Models. Liebenwein et al., 2021. arXiv:2106.12718.

    Args:
        samples: `(N, D)` samples, N >= 1.
        means: `(K, D)` mode means of the training data.
        covs: `(K, D, D)` mode covariances of the training data.
        thresholds: the values of c, in standard deviations.

    Returns:
        For each c, `good_{c}std` (percent of samples) and `modes_{c}std` (number of modes
        reached, as a float), with c formatted by `threshold_label` ("2", "2p5").

    Raises:
        ValueError: on empty samples, mismatched shapes or thresholds that are not positive.
    """
    values = _check_thresholds(thresholds)
    samples = torch.as_tensor(samples)
    if samples.dim() != 2 or samples.shape[0] == 0:
        raise ValueError(f"`samples` must have shape (N, D) with N >= 1; got {tuple(samples.shape)}")
    _warn_non_finite(samples)

    distance = mode_distances(samples, means, covs)
    good, per_mode = _count_good(distance, values)

    return _shares_from_counts(good, per_mode, samples.shape[0], values)


class GoodSampleShare(Metric):
    """Good-sample share and modes reached, accumulated over batches of samples.

    The states are integer counts (samples seen, good samples per threshold, samples within
    each threshold of each mode), summed across processes, so the result equals
    `good_sample_share` on the concatenation of all batches on all processes.

    Args:
        means: `(K, D)` mode means of the training data; stored as a buffer.
        covs: `(K, D, D)` mode covariances of the training data; stored as a buffer.
        thresholds: the values of c, in standard deviations.
        **kwargs: passed on to `torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        means: Tensor,
        covs: Tensor,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)

        self.thresholds = _check_thresholds(thresholds)
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        _check_modes(means, covs)
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)

        num_thresholds, num_modes = len(self.thresholds), means.shape[0]
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("good", default=torch.zeros(num_thresholds, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "per_mode", default=torch.zeros(num_thresholds, num_modes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, samples: Tensor) -> None:
        """Add a batch of `(B, D)` samples."""
        samples = torch.as_tensor(samples)
        if samples.dim() != 2:
            raise ValueError(f"`samples` must have shape (B, D); got {tuple(samples.shape)}")
        _warn_non_finite(samples)

        good, per_mode = _count_good(mode_distances(samples, self.means, self.covs), self.thresholds)
        self.total += samples.shape[0]
        self.good += good
        self.per_mode += per_mode

    def compute(self) -> dict[str, float]:
        """Return the same keys as `good_sample_share`.

        Raises:
            ValueError: if no sample has been added since the last reset.
        """
        if int(self.total) == 0:
            raise ValueError("GoodSampleShare.compute called before any sample was added; call update first")

        return _shares_from_counts(self.good, self.per_mode, int(self.total), self.thresholds)


@dataclass(frozen=True)
class SampleSetSummary:
    """Mode metrics over several independent sample sets.

    Attributes:
        mean: mean over the sets for every key of `good_sample_share`.
        std: sample standard deviation over the sets (ddof=1), or NaN with a single set.
        per_set: the result of each set.
        num_samples: samples per set.
    """

    mean: dict[str, float]
    std: dict[str, float]
    per_set: list[dict[str, float]] = field(repr=False)
    num_samples: int


def sample_good_share(
    sample_fn: Callable[[int], Tensor],
    means: Tensor,
    covs: Tensor,
    num_samples: int = 20_000,
    num_sets: int = 3,
    batch_size: int = 5_000,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> SampleSetSummary:
    """Draw samples from a model in batches and measure the good-sample share per sample set.

    Randomness comes from `sample_fn` alone, so seed the generator it uses for reproducible
    numbers. The samples are detached and only counts are kept, so memory stays bounded by one
    batch. Wrap the call in `torch.no_grad()` when the sampler needs no autograd.

    Args:
        sample_fn: returns `(n, D)` samples for a requested `n`, for example
            `lambda n: cnf.sample(n, generator=generator)`.
        means: `(K, D)` mode means of the training data.
        covs: `(K, D, D)` mode covariances of the training data.
        num_samples: samples per set.
        num_sets: number of independent sample sets.
        batch_size: the largest `n` passed to `sample_fn`.
        thresholds: the values of c, in standard deviations.

    Returns:
        Mean and standard deviation over the sets of every `good_sample_share` key.

    Raises:
        ValueError: if a count is below 1 or `sample_fn` returns the wrong shape.
    """
    for name, value in (("num_samples", num_samples), ("num_sets", num_sets), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer; got {value!r}")

    per_set = []
    for _ in range(num_sets):
        metric = GoodSampleShare(means, covs, thresholds)
        drawn = 0
        while drawn < num_samples:
            n = min(batch_size, num_samples - drawn)
            batch = sample_fn(n)
            if not isinstance(batch, Tensor) or batch.dim() != 2 or batch.shape[0] != n:
                shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
                raise ValueError(f"`sample_fn({n})` must return a tensor of shape ({n}, D); got {shape}")
            metric.update(batch.detach())
            drawn += n
        per_set.append(metric.compute())

    keys = list(per_set[0])
    table = np.array([[result[key] for key in keys] for result in per_set])
    mean = dict(zip(keys, table.mean(0).tolist()))
    if num_sets > 1:
        std = dict(zip(keys, table.std(0, ddof=1).tolist()))
    else:
        std = dict.fromkeys(keys, math.nan)

    return SampleSetSummary(mean=mean, std=std, per_set=per_set, num_samples=num_samples)
