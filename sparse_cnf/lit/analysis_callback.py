"""Per-round analysis: good-sample share, Hessian statistics and pictures of the flow."""

__all__ = ["RoundAnalysis"]

import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from sparse_cnf.analysis import hessian_stats, plot_flow
from sparse_cnf.metrics import sample_good_share

log = logging.getLogger(__name__)

_SWITCHES = ("auto", True, False)
_HESSIAN_KEYS = (
    "num_data", "method", "mode", "exact_max_coordinates", "num_smallest", "eigsh_tol", "eigsh_maxiter",
    "trace_rtol", "trace_min_samples", "trace_max_samples", "trace_patience", "positive_rtol",
    "density_vectors", "recompute_graph",
)


def _switch(section: Mapping[str, Any], name: str) -> Any:
    value = section.get("enabled", "auto")
    if value not in _SWITCHES:
        raise ValueError(f"analysis.{name}.enabled must be auto, true or false; got {value!r}.")
    return value


class RoundAnalysis(pl.Callback):
    """Add analysis columns to every prune round's results row.

    Called by `PruneFinetune` through `on_prune_round_end` with the round's best-validation
    weights loaded. On datasets with mode labels it adds `good_{c}std` and `modes_{c}std`, the
    means over sample sets, with `good_{c}std_std` beside them. With the Hessian enabled it adds
    the `hessian_*` columns. For 2-D data it draws the flow at several times under
    `<run dir>/plots/round_XX/`.

    Args:
        modes: `enabled` (auto: when the data have modes), `num_samples` per set, `num_sets`,
            `batch_size`, `thresholds`.
        hessian: `enabled` (false by default), and keyword arguments of the Hessian analysis.
        plots: `enabled` (auto: 2-D data), `times`, `grid_size`, `num_samples`.
        run_dir: The run folder; plots go to `run_dir/plots`.
        seed: Seed of the sample sets and the Hessian's data subset and probes.
    """

    def __init__(
        self,
        modes: Mapping[str, Any] | None = None,
        hessian: Mapping[str, Any] | None = None,
        plots: Mapping[str, Any] | None = None,
        run_dir: str | Path | None = None,
        seed: int = 0,
    ):
        super().__init__()

        self.modes = dict(modes or {"enabled": False})
        self.hessian = dict(hessian or {"enabled": False})
        self.plots = dict(plots or {"enabled": False})
        for name, section in (("modes", self.modes), ("hessian", self.hessian), ("plots", self.plots)):
            _switch(section, name)
        self.seed = int(seed)
        self.plot_dir = Path(run_dir) / "plots" if run_dir is not None else None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, run_dir: str | Path | None = None) -> "RoundAnalysis":
        """Build from the `analysis` config group (keys `modes`, `hessian`, `plots`, `seed`)."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {"modes", "hessian", "plots", "seed"})
        if unknown:
            raise ValueError(f"unknown analysis keys {unknown}; valid keys are modes, hessian, plots, seed.")
        return cls(cfg.get("modes"), cfg.get("hessian"), cfg.get("plots"), run_dir=run_dir, seed=cfg.get("seed", 0))

    def _seed(self, *parts: Any) -> int:
        return zlib.crc32("/".join(str(p) for p in (self.seed, *parts)).encode())

    # ----------------------------------------------------------------------------------------

    def on_prune_round_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, row: dict[str, Any]) -> None:
        """Compute this round's analysis columns, add them to `row`, and log the pictures."""
        columns, paths = self.analyze(pl_module.cnf, trainer.datamodule, row["round"])
        row.update(columns)
        self._log_images(trainer, paths, row["round"])

    def analyze(self, cnf: torch.nn.Module, datamodule: Any, round_index: int = 0) -> tuple[dict[str, Any], list[Path]]:
        """Run the enabled analyses on `cnf` with the data of `datamodule`.

        The CNF is analysed in eval mode and left in its previous mode, with its NFE counters
        reset.

        Args:
            cnf: The trained flow.
            datamodule: The data module it was trained on (for modes, the Hessian subset, plots).
            round_index: Round number, used in seeds and picture folder names.

        Returns:
            The result columns and the paths of the pictures written.
        """
        has_modes = datamodule is not None and getattr(datamodule, "mode_means", None) is not None
        is_2d = datamodule is not None and getattr(datamodule, "dim", None) == 2
        columns: dict[str, Any] = {}
        paths: list[Path] = []

        was_training = cnf.training
        cnf.eval()
        try:
            if self._wants(self.modes, has_modes):
                columns.update(self._mode_columns(cnf, datamodule, round_index))
            if self._wants(self.hessian, False):
                columns.update(self._hessian_columns(cnf, datamodule, round_index))
            if self._wants(self.plots, is_2d) and self.plot_dir is not None:
                paths = self._plot(cnf, datamodule, round_index)
        finally:
            cnf.train(was_training)
            cnf.reset_nfe()

        return columns, paths

    @staticmethod
    def _wants(section: Mapping[str, Any], available: bool) -> bool:
        enabled = section.get("enabled", "auto")
        return available if enabled == "auto" else bool(enabled)

    def _options(self, section: Mapping[str, Any], name: str, valid: Sequence[str]) -> dict[str, Any]:
        options = {key: value for key, value in section.items() if key != "enabled"}
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown analysis.{name} keys {unknown}; valid keys are enabled, {', '.join(valid)}.")
        return options

    @torch.no_grad()
    def _mode_columns(self, cnf: torch.nn.Module, datamodule: Any, round_index: int) -> dict[str, float]:
        if getattr(datamodule, "mode_means", None) is None:
            raise ValueError("analysis.modes.enabled is true, but the dataset has no mode labels; set it to auto or false.")
        options = self._options(self.modes, "modes", ("num_samples", "num_sets", "batch_size", "thresholds"))
        param = next(cnf.parameters())
        generator = torch.Generator(device=param.device).manual_seed(self._seed("modes", round_index))

        summary = sample_good_share(
            lambda n: cnf.sample(n, generator=generator),
            datamodule.mode_means.to(param),
            datamodule.mode_covs.to(param),
            **options,
        )

        columns: dict[str, float] = {}
        for key, value in summary.mean.items():
            columns[key] = float(value)
            if key.startswith("good_"):
                columns[f"{key}_std"] = float(summary.std[key])
        return columns

    def _hessian_columns(self, cnf: torch.nn.Module, datamodule: Any, round_index: int) -> dict[str, Any]:
        options = self._options(self.hessian, "hessian", _HESSIAN_KEYS)
        num_data = int(options.pop("num_data", 1000))
        train = datamodule.splits["train"] if datamodule is not None else None
        if train is None or not torch.is_floating_point(train):
            raise ValueError("analysis.hessian needs a dataset whose training split is a float tensor (not MNIST images).")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self._seed("hessian-data")))
        param = next(cnf.parameters())
        subset = train[order[:num_data]].to(param)

        # Hessian-vector products need the direct solver: the adjoint's gradients carry no graph.
        solvers = [block.solver for block in cnf.blocks]
        for block in cnf.blocks:
            block.set_solver(block.solver.replace(adjoint=False))
        try:
            stats = hessian_stats(cnf, lambda model: -model.log_prob(subset).mean(), seed=self._seed("hessian", round_index), **options)
        finally:
            for block, solver in zip(cnf.blocks, solvers):
                block.set_solver(solver)

        columns: dict[str, Any] = dict(stats.as_metrics(prefix="hessian_"))
        columns.update({
            "hessian_method": stats.method,
            "hessian_mode": stats.mode,
            "hessian_solver": solvers[0].method,
            "hessian_num_data": len(subset),
            "hessian_seconds": round(stats.seconds, 3),
        })
        return columns

    def _plot(self, cnf: torch.nn.Module, datamodule: Any, round_index: int) -> list[Path]:
        options = self._options(self.plots, "plots", ("times", "grid_size", "num_samples", "bounds"))
        fractions = [float(t) for t in options.get("times", (0.0, 0.25, 0.5, 0.75, 1.0))]
        if any(not 0.0 <= t <= 1.0 for t in fractions):
            raise ValueError(f"analysis.plots.times are fractions of the flow's total time in [0, 1]; got {fractions}.")
        total = float(cnf.total_time())
        times = [t * total for t in fractions]
        field = cnf.blocks[0].field if len(cnf.blocks) == 1 else None
        modes = datamodule.mode_means if datamodule is not None else None
        bounds = tuple(options.get("bounds", (-3.0, 3.0, -3.0, 3.0)))

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed("plots", round_index))
            return plot_flow(
                cnf, times, self.plot_dir / f"round_{round_index:02d}", field=field, modes=modes, bounds=bounds,
                num_samples=int(options.get("num_samples", 2000)), grid_size=int(options.get("grid_size", 100)),
            )

    @staticmethod
    def _log_images(trainer: pl.Trainer, paths: Sequence[Path], round_index: int) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=f"flow/round_{round_index:02d}", images=[str(p) for p in paths], step=trainer.global_step)
