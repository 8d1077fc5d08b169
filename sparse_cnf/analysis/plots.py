"""PNG plots of a 2-D flow at times t (samples, log-density, vector field) and of prune sweeps."""

__all__ = [
    "DEFAULT_SWEEP_KEYS",
    "plot_flow",
    "plot_log_density",
    "plot_samples",
    "plot_sweep",
    "plot_vector_field",
]

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

# Figures are built on their own Agg canvas, without pyplot, so plotting never changes the
# process-wide matplotlib backend and leaves no open figure behind.

Bounds = tuple[float, float, float, float]

DEFAULT_SWEEP_KEYS = (
    "test_nll",
    "val_nll",
    "good_2std",
    "good_3std",
    "modes_2std",
    "hessian_lambda_max",
    "hessian_trace",
)
SWEEP_X_KEYS = ("prune_ratio", "nonzero_params")
LABELS = {
    "prune_ratio": "prune ratio",
    "nonzero_params": "nonzero parameters",
    "test_nll": "test NLL (nats)",
    "val_nll": "validation NLL (nats)",
    "hessian_lambda_max": "Hessian $\\lambda_{max}$",
    "hessian_lambda_min": "Hessian $\\lambda_{min}$",
    "hessian_trace": "Hessian trace",
    "hessian_condition": "Hessian $\\lambda_{max} / \\lambda_{min}$",
}


class FlowAtTimes(Protocol):
    """Interface of a flow with samples and log-densities at intermediate times, like `sparse_cnf.flows.CNF`."""

    def sample_at(self, n: int, times: Sequence[float]) -> Tensor: ...

    def log_prob_at(self, x: Tensor, times: Sequence[float]) -> Tensor: ...


# ---------------------------------------------------------------------------------------------
# Helpers


def _new_figure(num_columns: int, num_rows: int = 1, panel_size: float = 3.2) -> Figure:
    figure = Figure(figsize=(panel_size * num_columns, panel_size * num_rows), layout="constrained")
    FigureCanvasAgg(figure)

    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    figure.clear()

    return path


def _check_times(times: Sequence[float] | Tensor) -> list[float]:
    values = [float(t) for t in (times.tolist() if isinstance(times, Tensor) else times)]
    if not values or not all(math.isfinite(t) for t in values):
        raise ValueError(f"`times` must be a non-empty sequence of finite floats in [0, T]; got {times!r}")

    return values


def _check_bounds(bounds: Bounds) -> Bounds:
    x_min, x_max, y_min, y_max = (float(b) for b in bounds)
    if not (x_min < x_max and y_min < y_max):
        raise ValueError(f"`bounds` must be (x_min, x_max, y_min, y_max) with min < max; got {bounds!r}")

    return x_min, x_max, y_min, y_max


def _grid(bounds: Bounds, size: int, dtype: torch.dtype, device: torch.device | str | None) -> tuple[Tensor, Tensor, Tensor]:
    """Return the `(size * size, 2)` grid points and the `(size,)` x and y axes."""
    if size < 2:
        raise ValueError(f"`grid_size` must be at least 2; got {size}")
    x_min, x_max, y_min, y_max = bounds
    xs = torch.linspace(x_min, x_max, size, dtype=dtype, device=device)
    ys = torch.linspace(y_min, y_max, size, dtype=dtype, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")

    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1), xs, ys


def _label(key: str) -> str:
    """Return an axis label for a result key, such as "good samples at 2 std (%)" for `good_2std`."""
    if key.startswith("good_") and key.endswith("std"):
        return f"good samples at {key[5:-3].replace('p', '.')} std (%)"
    if key.startswith("modes_") and key.endswith("std"):
        return f"modes reached at {key[6:-3].replace('p', '.')} std"

    return LABELS.get(key, key)


def _mark_modes(axes: Axes, modes: Tensor | np.ndarray | None) -> None:
    if modes is None:
        return
    points = np.asarray(torch.as_tensor(modes).detach().cpu(), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"`modes` must have shape (K, 2); got {points.shape}")
    axes.scatter(points[:, 0], points[:, 1], marker="x", s=60, color="red", linewidths=2, label="data modes")


def _to_numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).cpu().numpy()


def _dtype_and_device(flow: Any) -> tuple[torch.dtype, torch.device | None]:
    parameters = getattr(flow, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None

    return (first.dtype, first.device) if first is not None else (torch.get_default_dtype(), None)


# ---------------------------------------------------------------------------------------------
# A flow at times t


def plot_samples(
    sample_at: Callable[[int, list[float]], Tensor],
    times: Sequence[float] | Tensor,
    path: str | Path,
    *,
    num_samples: int = 2000,
    bounds: Bounds | None = None,
    modes: Tensor | np.ndarray | None = None,
) -> Path:
    """Plot samples of a 2-D flow at several times, one panel per time.

    Args:
        sample_at: returns `(len(times), n, 2)` samples for `(n, times)`, such as `cnf.sample_at`.
        times: the times t, as floats (passed on as a list).
        path: the PNG file to write; missing folders are created.
        num_samples: samples per time.
        bounds: `(x_min, x_max, y_min, y_max)` of every panel, or None to fit the samples.
        modes: `(K, 2)` data modes to mark.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: on empty or non-finite times, bad bounds, or samples that are not 2-D.
    """
    time_list = _check_times(times)
    samples = _to_numpy(sample_at(num_samples, time_list))
    if samples.shape != (len(time_list), num_samples, 2):
        raise ValueError(
            f"`sample_at` must return shape (len(times), n, 2) = {(len(time_list), num_samples, 2)}; "
            f"got {samples.shape}. Only 2-D flows can be plotted"
        )

    figure = _new_figure(len(time_list))
    for axes, t, points in zip(figure.subplots(1, len(time_list), squeeze=False)[0], time_list, samples):
        axes.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, linewidths=0)
        _mark_modes(axes, modes)
        if bounds is not None:
            x_min, x_max, y_min, y_max = _check_bounds(bounds)
            axes.set_xlim(x_min, x_max)
            axes.set_ylim(y_min, y_max)
        axes.set_aspect("equal")
        axes.set_title(f"samples, t = {t:g}")

    return _save(figure, path)


def plot_log_density(
    log_prob_at: Callable[[Tensor, list[float]], Tensor],
    times: Sequence[float] | Tensor,
    path: str | Path,
    *,
    bounds: Bounds = (-4.0, 4.0, -4.0, 4.0),
    grid_size: int = 100,
    batch_size: int = 2500,
    log_density_range: float = 20.0,
    modes: Tensor | np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Path:
    """Plot heatmaps of log p(x, t) of a 2-D flow on a grid, one panel per time.

    Values more than `log_density_range` nats below the panel's maximum are shown at that
    floor, so that the far tails do not wash out the colour scale. Non-finite values are left blank.

    Args:
        log_prob_at: returns `(len(times), B)` log-densities for `(x, times)` with x of shape
            `(B, 2)`, such as `cnf.log_prob_at`.
        times: the times t, as floats (passed on as a list).
        path: the PNG file to write; missing folders are created.
        bounds: `(x_min, x_max, y_min, y_max)` of the grid.
        grid_size: grid points per axis.
        batch_size: grid points per call of `log_prob_at`.
        log_density_range: nats below the maximum shown before the colour scale is clipped.
        modes: `(K, 2)` data modes to mark.
        dtype: dtype of the grid points, which must match the flow's parameters.
        device: device of the grid points.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: on empty or non-finite times, bad bounds or sizes, or a wrong output shape.
    """
    time_list = _check_times(times)
    bounds = _check_bounds(bounds)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1; got {batch_size}")
    if not log_density_range > 0:
        raise ValueError(f"`log_density_range` must be positive (nats); got {log_density_range}")
    points, _, _ = _grid(bounds, grid_size, dtype, device)

    pieces = []
    for chunk in points.split(batch_size):
        values = log_prob_at(chunk, time_list)
        if values.shape != (len(time_list), chunk.shape[0]):
            raise ValueError(
                f"`log_prob_at` must return shape (len(times), B) = {(len(time_list), chunk.shape[0])}; "
                f"got {tuple(values.shape)}"
            )
        pieces.append(_to_numpy(values))
    log_density = np.concatenate(pieces, axis=1).reshape(len(time_list), grid_size, grid_size)

    figure = _new_figure(len(time_list))
    for axes, t, image in zip(figure.subplots(1, len(time_list), squeeze=False)[0], time_list, log_density):
        image = np.ma.masked_invalid(image)
        top = float(image.max()) if image.count() else 0.0
        heatmap = axes.imshow(
            image,
            origin="lower",
            extent=bounds,
            vmin=top - log_density_range,
            vmax=top,
            cmap="viridis",
            interpolation="nearest",
        )
        figure.colorbar(heatmap, ax=axes, shrink=0.8)
        _mark_modes(axes, modes)
        axes.set_title(f"log p(x, t = {t:g})")

    return _save(figure, path)


def plot_vector_field(
    field: Callable[[Tensor, Tensor], Tensor],
    times: Sequence[float] | Tensor,
    path: str | Path,
    *,
    bounds: Bounds = (-4.0, 4.0, -4.0, 4.0),
    grid_size: int = 20,
    kind: str = "quiver",
    modes: Tensor | np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Path:
    """Plot the vector field f(z, t) of a 2-D ODE at several times, coloured by speed.

    Args:
        field: computes `(B, 2)` velocities from `(t, z)`, t a 0-d tensor and z of shape
            `(B, 2)`, such as a field module from `sparse_cnf.flows`.
        times: the times t.
        path: the PNG file to write; missing folders are created.
        bounds: `(x_min, x_max, y_min, y_max)` of the grid.
        grid_size: grid points per axis.
        kind: "quiver" for arrows or "stream" for streamlines.
        modes: `(K, 2)` data modes to mark.
        dtype: dtype of t and z, which must match the field's parameters.
        device: device of t and z.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: on an unknown `kind`, bad times, bounds or sizes, or a wrong output shape.
    """
    if kind not in ("quiver", "stream"):
        raise ValueError(f"`kind` must be 'quiver' or 'stream'; got {kind!r}")
    time_list = _check_times(times)
    bounds = _check_bounds(bounds)
    points, xs, ys = _grid(bounds, grid_size, dtype, device)

    figure = _new_figure(len(time_list))
    for axes, t in zip(figure.subplots(1, len(time_list), squeeze=False)[0], time_list):
        with torch.no_grad():
            velocity = field(torch.tensor(t, dtype=dtype, device=device), points)
        if velocity.shape != points.shape:
            raise ValueError(f"`field(t, z)` must return shape {tuple(points.shape)}; got {tuple(velocity.shape)}")
        u, v = (_to_numpy(velocity[:, i]).reshape(grid_size, grid_size) for i in range(2))
        speed = np.hypot(u, v)
        x, y = _to_numpy(xs), _to_numpy(ys)
        if kind == "quiver":
            grid_x, grid_y = np.meshgrid(x, y)
            arrows = axes.quiver(grid_x, grid_y, u, v, speed, cmap="viridis", angles="xy")
            figure.colorbar(arrows, ax=axes, shrink=0.8, label="speed")
        else:
            lines = axes.streamplot(x, y, u, v, color=speed, cmap="viridis", density=1.2)
            figure.colorbar(lines.lines, ax=axes, shrink=0.8, label="speed")
        _mark_modes(axes, modes)
        axes.set_xlim(bounds[0], bounds[1])
        axes.set_ylim(bounds[2], bounds[3])
        axes.set_aspect("equal")
        axes.set_title(f"f(z, t = {t:g})")

    return _save(figure, path)


def plot_flow(
    flow: FlowAtTimes,
    times: Sequence[float] | Tensor,
    directory: str | Path,
    *,
    field: Callable[[Tensor, Tensor], Tensor] | None = None,
    prefix: str = "flow",
    num_samples: int = 2000,
    bounds: Bounds = (-4.0, 4.0, -4.0, 4.0),
    grid_size: int = 100,
    modes: Tensor | np.ndarray | None = None,
) -> list[Path]:
    """Plot samples and log-density of a 2-D flow at several times, and its vector field if given.

    The grid dtype and device follow the flow's first parameter. Files are
    `{prefix}_samples.png`, `{prefix}_log_density.png` and `{prefix}_field.png`.

    Args:
        flow: an object with `sample_at(n, times)` and `log_prob_at(x, times)`, such as a CNF.
        times: the times t.
        directory: the folder for the PNG files; it is created if missing.
        field: the ODE's `field(t, z)`, or None to skip the vector-field plot.
        prefix: start of every file name.
        num_samples: samples per time.
        bounds: `(x_min, x_max, y_min, y_max)` of every panel.
        grid_size: grid points per axis of the log-density heatmaps.
        modes: `(K, 2)` data modes to mark.

    Returns:
        The paths of the written PNGs, for logging (for example `wandb.Image(str(path))`).
    """
    directory = Path(directory)
    dtype, device = _dtype_and_device(flow)
    paths = [
        plot_samples(flow.sample_at, times, directory / f"{prefix}_samples.png", num_samples=num_samples,
                     bounds=bounds, modes=modes),
        plot_log_density(flow.log_prob_at, times, directory / f"{prefix}_log_density.png", bounds=bounds,
                         grid_size=grid_size, modes=modes, dtype=dtype, device=device),
    ]
    if field is not None:
        paths.append(
            plot_vector_field(field, times, directory / f"{prefix}_field.png", bounds=bounds, modes=modes,
                              dtype=dtype, device=device)
        )

    return paths


# ---------------------------------------------------------------------------------------------
# Sweeps


def _numeric(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None

    return number if math.isfinite(number) else None


def _series(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str, group_key: str | None) -> dict[str, np.ndarray]:
    """Return, per group, an `(M, 3)` array of x, mean y and std of y over rows with equal x, sorted by x."""
    collected: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        x, y = _numeric(row.get(x_key)), _numeric(row.get(y_key))
        if x is None or y is None:
            continue
        group = str(row.get(group_key, "")) if group_key is not None else ""
        collected.setdefault(group, {}).setdefault(x, []).append(y)

    series = {}
    for group, by_x in sorted(collected.items()):
        table = [(x, float(np.mean(ys)), float(np.std(ys, ddof=1)) if len(ys) > 1 else 0.0) for x, ys in by_x.items()]
        series[group] = np.array(sorted(table))

    return series


def plot_sweep(
    rows: Sequence[Mapping[str, Any]],
    directory: str | Path,
    *,
    x_keys: Sequence[str] = SWEEP_X_KEYS,
    y_keys: Sequence[str] = DEFAULT_SWEEP_KEYS,
    group_key: str | None = None,
    prefix: str = "sweep",
) -> list[Path]:
    """Plot sweep metrics against prune ratio and against nonzero parameters.

    One PNG per x key (`{prefix}_vs_{x_key}.png`) with one panel per y key. Rows with the same
    group and x (for example several seeds) are averaged, with their standard deviation as an
    error bar. Keys missing from every row are skipped, and so are values that are missing,
    non-numeric or non-finite. The nonzero-parameter axis is logarithmic.

    Args:
        rows: one mapping per run and prune round, such as the rows of `results.csv`.
        directory: the folder for the PNG files; it is created if missing.
        x_keys: the keys to plot against.
        y_keys: the metrics to plot, one panel each.
        group_key: the key whose values make separate lines (for example "method"), or None.
        prefix: start of every file name.

    Returns:
        The paths of the written PNGs.

    Raises:
        ValueError: if no row has a numeric value for any of `x_keys`, or for any of `y_keys`.
    """
    present_x = [key for key in x_keys if any(_numeric(row.get(key)) is not None for row in rows)]
    present_y = [key for key in y_keys if any(_numeric(row.get(key)) is not None for row in rows)]
    available = sorted({key for row in rows for key in row})
    if not present_x:
        raise ValueError(f"no row has a numeric value for any x key {list(x_keys)}; the rows have keys {available}")
    if not present_y:
        raise ValueError(f"no row has a numeric value for any y key {list(y_keys)}; the rows have keys {available}")

    paths = []
    for x_key in present_x:
        figure = _new_figure(len(present_y), panel_size=3.6)
        for axes, y_key in zip(figure.subplots(1, len(present_y), squeeze=False)[0], present_y):
            for group, table in _series(rows, x_key, y_key, group_key).items():
                axes.errorbar(table[:, 0], table[:, 1], yerr=table[:, 2], marker="o", markersize=3, capsize=2,
                              label=group or None)
            if x_key == "nonzero_params":
                axes.set_xscale("log")
            axes.set_xlabel(_label(x_key))
            axes.set_ylabel(_label(y_key))
            axes.grid(alpha=0.3)
            if group_key is not None and axes.get_legend_handles_labels()[0]:
                axes.legend(fontsize="small", title=group_key)
        paths.append(_save(figure, Path(directory) / f"{prefix}_vs_{x_key}.png"))

    return paths
