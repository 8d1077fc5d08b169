"""`sparse-cnf-train`: compose a run with Hydra, train and prune a CNF, write its results table."""

__all__ = ["main", "train"]

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from sparse_cnf.cli.common import (
    CONFIG_DIR,
    build_datamodule,
    build_loggers,
    configure_environment,
    quiet_known_warnings,
    finish_wandb,
    resolve_ckpt_path,
    to_plain,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Train one run as `cfg` describes and return the last round's validation NLL.

    Everything that a config can get wrong (names, tolerances, files, schedules) is checked
    while the objects are built, before the first training step. An error is also written to
    the run's log file before it propagates. A run folder whose run has finished is not trained
    again: its last validation NLL is returned.

    Args:
        cfg: The composed `train.yaml` config.

    Returns:
        The best validation NLL of the last round, in nats (what a Hydra sweeper minimizes).
    """
    try:
        return _train(cfg)
    except Exception as error:
        log.error("run failed: %s: %s", type(error).__name__, error)
        raise


def _finished_result(ckpt_path: str | None, run_dir: Path, total_epochs: int, num_rounds: int) -> float | None:
    """Return the last validation NLL when `ckpt_path` is the end of a finished run, else None."""
    import torch

    results = run_dir / "results.json"
    if ckpt_path is None or not results.is_file():
        return None
    rows = json.loads(results.read_text())
    epoch = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("epoch", -1)
    if epoch + 1 < total_epochs or len(rows) != num_rounds:
        return None
    value = rows[-1].get("val_nll")
    return math.nan if value is None else float(value)


def _check_precision(cfg: DictConfig) -> None:
    dtype = cfg.dataset.get("dtype", "float32")
    precision = str(cfg.trainer.get("precision", "32-true"))
    if dtype == "float64" and not precision.startswith("64"):
        raise ValueError(
            f"dataset.dtype=float64 needs a float64 model, but trainer.precision={precision!r}. "
            "Add trainer.precision=64-true."
        )


def _train(cfg: DictConfig) -> float:
    import lightning.pytorch as pl

    from sparse_cnf.lit import AtomicCheckpointIO, CNFSystem, PruneFinetune, RoundAnalysis
    from sparse_cnf.pruning import PruneConfig

    run_dir = Path(cfg.run_dir)
    configure_environment(cfg, run_dir)
    pl.seed_everything(cfg.seed, workers=True)

    # Phase 1: build and validate everything before training starts.
    if cfg.epochs < 1:
        raise ValueError(f"epochs (of dense training) must be at least 1; got {cfg.epochs}.")
    _check_precision(cfg)
    datamodule = build_datamodule(cfg.dataset, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    system = CNFSystem(
        dim=datamodule.dim,
        model=to_plain(cfg.model),
        solver=to_plain(cfg.solver),
        optimizer=to_plain(cfg.optimizer),
        scheduler=to_plain(cfg.scheduler),
        seed=cfg.seed,
        bits_per_dim=datamodule.hparams.name == "mnist",
        data={**to_plain(cfg.dataset), "seed": cfg.seed},
        eval_divergence=cfg.get("eval_divergence"),
    )
    prune_cfg = PruneConfig.from_config(to_plain(cfg.prune))
    pruner = PruneFinetune(
        ratios=prune_cfg.schedule.ratios,
        dense_epochs=cfg.epochs,
        epochs_per_round=prune_cfg.epochs_per_round,
        method=prune_cfg.method,
        rewind=prune_cfg.rewind,
        results_dir=str(run_dir),
    )
    analysis = RoundAnalysis.from_config(to_plain(cfg.analysis), run_dir=run_dir)
    if cfg.trainer.get("max_epochs") is not None and cfg.trainer.max_epochs != pruner.total_epochs:
        raise ValueError(
            f"trainer.max_epochs={cfg.trainer.max_epochs} disagrees with epochs={cfg.epochs} plus the "
            f"prune schedule ({pruner.total_epochs} epochs in all). Set `epochs` and "
            "`prune.epochs_per_round` instead and leave trainer.max_epochs null."
        )
    ckpt_path = resolve_ckpt_path(cfg, run_dir)
    finished = _finished_result(ckpt_path, run_dir, pruner.total_epochs, len(pruner.ratios) + 1)
    if finished is not None:
        log.info("run folder %s contains a finished run, so there is nothing to train. Results: %s", run_dir, run_dir / "results.csv")
        return finished
    loggers = build_loggers(cfg, run_dir)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values()]
    if not loggers:
        # Lightning rejects a learning-rate monitor without a logger; with logger=none it has
        # nowhere to write anyway.
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        max_epochs=pruner.total_epochs,
        callbacks=[pruner, analysis, *callbacks],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    log.info("data: %s", datamodule.info)
    log.info("run folder: %s%s", run_dir, f" (resuming from {ckpt_path})" if ckpt_path else "")

    # Phase 2: train, prune, fine-tune.
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    except BaseException as error:
        error.raised_in_fit = True
        finish_wandb(loggers, failed=True)
        raise
    finish_wandb(loggers, failed=False)

    # Phase 3: report.
    rows = pruner.rows
    if rows:
        log.info("results: %s and %s", run_dir / "results.csv", run_dir / "results.json")
    if analysis.plot_dir is not None and analysis.plot_dir.exists():
        log.info("plots: %s", analysis.plot_dir)
    return float(rows[-1]["val_nll"]) if rows else math.nan


# Errors that a bad config value or file raises while the run is built, before training.
_CONFIG_ERRORS = (ValueError, TypeError, FileNotFoundError)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except _CONFIG_ERRORS as error:
        # A single run stops with the one line that train() logged, not a traceback. In a
        # multirun the error propagates, so that Hydra marks the job failed and runs the others.
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        single_run = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN
        if single_run and not getattr(error, "raised_in_fit", False) and not os.environ.get("HYDRA_FULL_ERROR"):
            raise SystemExit(2) from error
        raise


def main() -> Any:
    """Console entry point of `sparse-cnf-train`."""
    quiet_known_warnings()
    return _hydra_main()


if __name__ == "__main__":
    main()
