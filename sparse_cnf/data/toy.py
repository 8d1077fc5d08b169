"""Seeded 2-D toy distributions whose samples carry the label of their mixture component."""

__all__ = ["TOY_DATASETS", "ToyData", "make_toy", "mode_statistics"]

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# A generator maps (n, rng) to points (n, 2) and labels (n,), where label -1 means "no mode".
_Generator = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ToyData:
    """Points of a toy set with their mode labels and per-mode statistics.

    Attributes:
        x: points, shape (n, 2), float32.
        labels: mode label of each point, shape (n,), int64; -1 for sets without modes.
        num_modes: number of modes K (0 for sets without modes).
        mode_means: mean of the points of each label, shape (K, 2), or None without modes.
        mode_covs: covariance of the points of each label, shape (K, 2, 2), or None.
    """

    x: Tensor
    labels: Tensor
    num_modes: int
    mode_means: Tensor | None
    mode_covs: Tensor | None


def _mixture(n: int, rng: np.random.Generator, centres: np.ndarray, stds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centres), size=n)
    x = centres[labels] + stds[labels, None] * rng.standard_normal((n, 2))

    return x, labels


def _on_circle(radius: np.ndarray, angle: np.ndarray) -> np.ndarray:
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)


def _gaussians(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Six isotropic components, std 0.5, centres evenly spaced on a circle of radius 4.
    angles = 2 * np.pi * np.arange(6) / 6

    return _mixture(n, rng, _on_circle(np.full(6, 4.0), angles), np.full(6, 0.5))


def _gaussians_spiral(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Ten components along 1.5 turns of a spiral. The radius falls from 4 to 1 and the std
    # from 0.3 to 0.1, so components on successive turns stay 2 units apart.
    angles = np.linspace(0.0, 3 * np.pi, 10)
    centres = _on_circle(np.linspace(4.0, 1.0, 10), angles)

    return _mixture(n, rng, centres, np.linspace(0.3, 0.1, 10))


def _spirals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Two arms rotated by pi; along an arm the radius grows from 0.5 to 4 over 1.5 turns.
    labels = rng.integers(0, 2, size=n)
    s = rng.uniform(0.0, 1.0, size=n)
    x = _on_circle(0.5 + 3.5 * s, 3 * np.pi * s + np.pi * labels)

    return x + 0.1 * rng.standard_normal((n, 2)), labels


def _eight_gaussians(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # FFJORD's set: centres at radius 4 / sqrt(2), component std 0.5 / sqrt(2).
    angles = 2 * np.pi * np.arange(8) / 8
    centres = _on_circle(np.full(8, 4.0 / np.sqrt(2)), angles)

    return _mixture(n, rng, centres, np.full(8, 0.5 / np.sqrt(2)))


def _pinwheel(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Five arms: a point at radial offset r is rotated by its arm's angle plus 0.25 * exp(r),
    # which bends each arm (radial std 0.3, tangential std 0.1).
    labels = rng.integers(0, 5, size=n)
    radial = 1.0 + 0.3 * rng.standard_normal(n)
    tangential = 0.1 * rng.standard_normal(n)
    angle = 2 * np.pi * labels / 5 + 0.25 * np.exp(radial)
    cos, sin = np.cos(angle), np.sin(angle)
    x = np.stack([cos * radial - sin * tangential, sin * radial + cos * tangential], axis=-1)

    return 2.0 * x, labels


def _checkerboard(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Eight filled squares of side 2 on a 4 x 4 board over [-4, 4]^2; the label is the square.
    column = rng.integers(0, 4, size=n)
    row = rng.integers(0, 2, size=n)
    x1 = column - 2 + rng.uniform(0.0, 1.0, size=n)
    x2 = 2 * row - 2 + (column % 2) + rng.uniform(0.0, 1.0, size=n)

    return 2.0 * np.stack([x1, x2], axis=-1), 2 * column + row


def _two_spirals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # FFJORD's set: arm 1 is arm 0 mirrored through the origin; the label is the arm.
    labels = rng.integers(0, 2, size=n)
    t = np.sqrt(rng.uniform(0.0, 1.0, size=n)) * 3 * np.pi
    arm = np.stack([-t * np.cos(t), t * np.sin(t)], axis=-1) + 0.5 * rng.uniform(0.0, 1.0, size=(n, 2))
    sign = np.where(labels == 0, 1.0, -1.0)[:, None]

    return sign * arm / 3 + 0.1 * rng.standard_normal((n, 2)), labels


def _rings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Four concentric rings of radii 3, 2.25, 1.5 and 0.75 with noise std 0.08.
    labels = rng.integers(0, 4, size=n)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    x = _on_circle(3.0 * (1.0 - 0.25 * labels), angle)

    return x + 0.08 * rng.standard_normal((n, 2)), labels


def _circles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Two concentric circles of radii 3 and 1.5 with noise std 0.24.
    labels = rng.integers(0, 2, size=n)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    x = _on_circle(3.0 * (1.0 - 0.5 * labels), angle)

    return x + 0.24 * rng.standard_normal((n, 2)), labels


def _moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Two interleaved half circles with noise std 0.1, scaled by 2 and shifted to the centre.
    labels = rng.integers(0, 2, size=n)
    t = rng.uniform(0.0, np.pi, size=n)
    upper = np.stack([np.cos(t), np.sin(t)], axis=-1)
    lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=-1)
    x = np.where(labels[:, None] == 0, upper, lower) + 0.1 * rng.standard_normal((n, 2))

    return 2.0 * x + np.array([-1.0, -0.2]), labels


def _swissroll(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # One rolled sheet seen from above (no modes): angle t in [1.5 pi, 4.5 pi], noise std 1.
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(0.0, 1.0, size=n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1) + rng.standard_normal((n, 2))

    return x / 5.0, np.full(n, -1)


_GENERATORS: dict[str, tuple[_Generator, int]] = {
    "gaussians": (_gaussians, 6),
    "gaussians_spiral": (_gaussians_spiral, 10),
    "spirals": (_spirals, 2),
    "8gaussians": (_eight_gaussians, 8),
    "pinwheel": (_pinwheel, 5),
    "checkerboard": (_checkerboard, 8),
    "2spirals": (_two_spirals, 2),
    "rings": (_rings, 4),
    "circles": (_circles, 2),
    "moons": (_moons, 2),
    "swissroll": (_swissroll, 0),
}

TOY_DATASETS: tuple[str, ...] = tuple(_GENERATORS)
"""Names accepted by `make_toy`."""


def mode_statistics(x: Tensor, labels: Tensor, num_modes: int) -> tuple[Tensor, Tensor]:
    """Compute the mean and covariance of the points of each mode label.

    The covariance is the unbiased sample covariance. Statistics are computed in float64 and
    returned in the dtype of `x`.

    Args:
        x: points, shape (n, D).
        labels: mode label of each point in [0, num_modes) or -1, shape (n,).
        num_modes: number of modes K.

    Returns:
        means of shape (K, D) and covariances of shape (K, D, D).

    Raises:
        ValueError: if a mode has fewer than D + 1 points, so its covariance is singular.
    """
    x64 = x.detach().to(torch.float64)
    counts = torch.bincount(labels[labels >= 0], minlength=num_modes)
    if bool((counts <= x.shape[1]).any()):
        raise ValueError(
            f"each of the {num_modes} modes needs more than {x.shape[1]} points to estimate its "
            f"covariance; got counts {counts.tolist()}; increase the number of samples"
        )

    means, covs = [], []
    for k in range(num_modes):
        points = x64[labels == k]
        means.append(points.mean(dim=0))
        covs.append(torch.cov(points.T))

    return torch.stack(means).to(x.dtype), torch.stack(covs).to(x.dtype)


def make_toy(name: str, n: int, seed: int, with_mode_statistics: bool = True) -> ToyData:
    """Sample `n` points of the toy set `name` with a NumPy generator seeded by `seed`.

    The Sparse Flows sets are `gaussians` (6 isotropic components of std 0.5 on a circle of
    radius 4), `gaussians_spiral` (10 components along a spiral, radius 4 to 1, std 0.3 to
    0.1) and `spirals` (2 arms). FFJORD's sets are `8gaussians`, `pinwheel`, `checkerboard`,
    `2spirals`, `rings`, `circles`, `moons` and `swissroll`. Labels are the component, arm, square, ring,
    circle or moon of each point; `swissroll` has no modes and labels every point -1.
    The points are not normalized; mode statistics are computed from the returned points.

    Args:
        name: one of `TOY_DATASETS`.
        n: number of points.
        seed: seed of the generator; the same (name, n, seed) gives the same points.
        with_mode_statistics: compute `mode_means` and `mode_covs`; False leaves them None,
            for callers that compute them from other points.

    Returns:
        the points, labels and mode statistics.

    Raises:
        ValueError: for an unknown name, n < 1, or a mode with too few points for its
            covariance.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
        Grathwohl et al., 2019, arXiv:1810.01367 (the FFJORD toy sets).
        Sparse Flows: Pruning Continuous-depth Models, Liebenwein et al., 2021,
        arXiv:2106.12718 (`gaussians`, `gaussians_spiral`, `spirals`).
    """
    if name not in _GENERATORS:
        raise ValueError(f"dataset.name must be one of {', '.join(TOY_DATASETS)}; got {name!r}")
    if n < 1:
        raise ValueError(f"the number of toy samples must be at least 1; got {n}")

    generate, num_modes = _GENERATORS[name]
    points, labels = generate(n, np.random.default_rng(seed))
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    label_tensor = torch.from_numpy(labels.astype(np.int64))

    if num_modes == 0 or not with_mode_statistics:
        return ToyData(x, label_tensor, num_modes, None, None)
    means, covs = mode_statistics(x, label_tensor, num_modes)

    return ToyData(x, label_tensor, num_modes, means, covs)
