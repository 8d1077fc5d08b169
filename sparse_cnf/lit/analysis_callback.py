"""Per-round analysis: good-sample share, Hessian statistics and pictures of the flow."""

__all__ = ["RoundAnalysis"]

import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from sparse_cnf.metrics import good_sample_share

log = logging.getLogger(__name__)

_SWITCHES = ("auto", True, False)


def _switch(section: Mapping[str, Any], name: str) -> Any:
    value = section.get("enabled", "auto")
    if value not in _SWITCHES:
        raise ValueError(f"analysis.{name}.enabled must be auto, true or false; got {value!r}.")
    return value


class RoundAnalysis(pl.Callback):
    """Add analysis columns to every prune round's results row.

    Called by `PruneFinetune` through `on_prune_round_end` with the round's best-validation
    weights loaded. Columns: `good_{c}std` and `modes_{c}std` (mean over sample sets, with
    `_std` companions) on datasets with mode labels; `hessian_*` when the Hessian is enabled;
    pictures of the flow at several times for 2-D data, under `<run dir>/plots/round_XX/`.

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
        """Compute this round's analysis columns and add them to `row`."""
        datamodule = trainer.datamodule
        cnf = pl_module.cnf
        was_training = cnf.training
        cnf.eval()
        try:
            if self._wants(self.modes, datamodule is not None and getattr(datamodule, "mode_means", None) is not None):
                row.update(self._mode_columns(cnf, datamodule, row["round"]))
        finally:
            cnf.train(was_training)

    @staticmethod
    def _wants(section: Mapping[str, Any], available: bool) -> bool:
        enabled = section.get("enabled", "auto")
        return available if enabled == "auto" else bool(enabled)

    @torch.no_grad()
    def _mode_columns(self, cnf: torch.nn.Module, datamodule: Any, round_index: int) -> dict[str, float]:
        if getattr(datamodule, "mode_means", None) is None:
            raise ValueError("analysis.modes.enabled is true, but the dataset has no mode labels.")
        num_samples = int(self.modes.get("num_samples", 20000))
        num_sets = int(self.modes.get("num_sets", 3))
        batch_size = int(self.modes.get("batch_size", 5000))
        thresholds: Sequence[float] = self.modes.get("thresholds", (1, 2, 3, 5))
        param = next(cnf.parameters())
        means = datamodule.mode_means.to(param)
        covs = datamodule.mode_covs.to(param)

        per_set = []
        for set_index in range(num_sets):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed("modes", round_index, set_index))
                chunks = [cnf.sample(min(batch_size, num_samples - start)) for start in range(0, num_samples, batch_size)]
            per_set.append(good_sample_share(torch.cat(chunks), means, covs, thresholds))

        columns: dict[str, float] = {}
        for key in per_set[0]:
            values = torch.tensor([shares[key] for shares in per_set], dtype=torch.float64)
            columns[key] = float(values.mean())
            columns[f"{key}_std"] = float(values.std()) if num_sets > 1 else 0.0
        return columns
