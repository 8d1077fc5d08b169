import math

import matplotlib
import pytest
import torch
from matplotlib.image import imread

from sparse_cnf.analysis.plots import plot_flow, plot_log_density, plot_samples, plot_sweep, plot_vector_field

DTYPE = torch.float64
MODES = torch.tensor([[2.0, 0.0], [-2.0, 0.0]], dtype=DTYPE)


class GaussianFlow(torch.nn.Module):
    """A flow whose marginal at time t is N(0, s(t)^2 I) with s(t) = 1 + t."""

    def __init__(self):
        super().__init__()

        self.scale = torch.nn.Parameter(torch.ones((), dtype=DTYPE))
        self.requested_times = []

    def sample_at(self, n: int, times: list[float]) -> torch.Tensor:
        self.requested_times.append(times)
        noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)

        return torch.stack([(1 + t) * self.scale * noise for t in times])

    def log_prob_at(self, x: torch.Tensor, times: list[float]) -> torch.Tensor:
        rows = []
        for t in times:
            std = (1 + t) * self.scale
            rows.append(-0.5 * (x / std).pow(2).sum(1) - 2 * torch.log(std) - math.log(2 * math.pi))

        return torch.stack(rows)


def rotation_field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (1 + t) * torch.stack([-z[:, 1], z[:, 0]], dim=1)


def _assert_png(path):
    image = imread(path)

    assert path.suffix == ".png"
    assert path.stat().st_size > 1000
    assert image.shape[0] > 100
    assert image.shape[1] > 100


def test_samples_png(tmp_path):
    flow = GaussianFlow()
    path = plot_samples(flow.sample_at, [0.0, 0.5, 1.0], tmp_path / "nested" / "samples.png", num_samples=300, modes=MODES)

    _assert_png(path)
    assert flow.requested_times == [[0.0, 0.5, 1.0]]


def test_log_density_png(tmp_path):
    flow = GaussianFlow()
    path = plot_log_density(flow.log_prob_at, torch.tensor([0.0, 1.0]), tmp_path / "density.png", grid_size=30,
                            batch_size=100, dtype=DTYPE)

    _assert_png(path)


def test_log_density_non_finite_blank(tmp_path):
    def log_prob_at(x: torch.Tensor, times: list[float]) -> torch.Tensor:
        values = -(x**2).sum(1)
        values[::7] = float("nan")
        return values.expand(len(times), -1)

    _assert_png(plot_log_density(log_prob_at, [0.0], tmp_path / "nan.png", grid_size=20))


@pytest.mark.parametrize("kind", ["quiver", "stream"])
def test_vector_field_png(tmp_path, kind):
    path = plot_vector_field(rotation_field, [0.0, 1.0], tmp_path / f"{kind}.png", kind=kind, grid_size=12, modes=MODES,
                             dtype=DTYPE)

    _assert_png(path)


def test_flow_writes_three_files(tmp_path):
    flow = GaussianFlow()
    paths = plot_flow(flow, [0.0, 1.0], tmp_path, field=rotation_field, num_samples=200, grid_size=20, modes=MODES)

    assert [p.name for p in paths] == ["flow_samples.png", "flow_log_density.png", "flow_field.png"]
    for path in paths:
        _assert_png(path)


def test_plots_keep_global_backend(tmp_path):
    backend = matplotlib.get_backend()
    plot_vector_field(rotation_field, [0.0], tmp_path / "field.png", grid_size=8)

    assert matplotlib.get_backend() == backend


def test_wrong_sample_shape_raises(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        plot_samples(lambda n, times: torch.zeros(len(times), n, 3), [0.0], tmp_path / "bad.png", num_samples=5)


def test_unknown_kind_raises(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        plot_vector_field(rotation_field, [0.0], tmp_path / "bad.png", kind="arrows")


def test_empty_times_raise(tmp_path):
    with pytest.raises(ValueError, match="times"):
        plot_log_density(GaussianFlow().log_prob_at, [], tmp_path / "bad.png")


def _sweep_rows() -> list[dict]:
    rows = []
    for method in ("unstructured", "structured"):
        for seed in (0, 1):
            for ratio, nonzero in ((0.0, 9000), (0.5, 4500), (0.9, 900)):
                rows.append({
                    "method": method,
                    "seed": seed,
                    "prune_ratio": ratio,
                    "nonzero_params": nonzero,
                    "test_nll": 2.8 + ratio + 0.01 * seed,
                    "good_2std": 86.0 - 10 * ratio,
                    "hessian_lambda_max": None if ratio == 0.5 else 3.0 + ratio,
                    "note": "text",
                })

    return rows


def test_sweep_png_per_x_key(tmp_path):
    paths = plot_sweep(_sweep_rows(), tmp_path, group_key="method")

    assert [p.name for p in paths] == ["sweep_vs_prune_ratio.png", "sweep_vs_nonzero_params.png"]
    for path in paths:
        _assert_png(path)


def test_sweep_missing_keys_raise(tmp_path):
    with pytest.raises(ValueError, match="y key"):
        plot_sweep(_sweep_rows(), tmp_path, y_keys=("val_bpd",))
