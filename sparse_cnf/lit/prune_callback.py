"""Prune-and-fine-tune rounds inside one `trainer.fit`, with a results row per round."""

__all__ = ["PruneFinetune"]

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from sparse_cnf.lit.io import write_results
from sparse_cnf.pruning import apply_masks, count_parameters, prune_structured, prune_unstructured, rewind_weights

log = logging.getLogger(__name__)

_METHODS = ("unstructured", "structured")
_REWIND = ("lr", "weights")


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


class PruneFinetune(pl.Callback):
    """Train dense, then prune to each target ratio in turn and fine-tune after every prune.

    Round 0 trains the dense model for `dense_epochs`. Round r >= 1 prunes the best-validation
    model of round r - 1 to `ratios[r - 1]` and fine-tunes it for `epochs_per_round`.

    At every round boundary the callback restores the round's best-validation weights and
    evaluates them on the test split. It appends a row to `results.json`/`results.csv` in
    `results_dir` and saves `rounds/round_XX.ckpt`. Then it restarts the optimizer and the
    learning-rate schedule ("learning-rate rewinding"). With `rewind="weights"` the surviving
    weights also go back to their values at the start of training, as for lottery tickets.

    Callbacks that define `on_prune_round_end(trainer, pl_module, row)` are called before the
    row is written and may add columns to it.

    The callback's state (round, best weights of the round, rows so far) is saved in every
    checkpoint, and masks are buffers of the model, so a run killed at any point resumes in the
    right round.

    Args:
        ratios: Target prune ratios of rounds 1, 2, ..., each in [0, 1) and increasing. Empty
            for dense training only.
        dense_epochs: Epochs of round 0.
        epochs_per_round: Fine-tuning epochs after each prune.
        method: "unstructured" (global magnitude) or "structured" (neurons by L1 norm).
        rewind: "lr" (restart the optimizer and schedule) or "weights" (also reset surviving
            weights to their initial values).
        results_dir: Folder of the results table and round checkpoints; None keeps rows in
            memory only.

    Raises:
        ValueError: On an unknown method or rewind mode, ratios outside [0, 1) or not
            increasing, or non-positive epoch counts.

    References:
        Sparse Flows: Pruning Continuous-depth Models. Liebenwein et al., 2021. arXiv:2106.12718.
        Comparing Rewinding and Fine-tuning in Neural Network Pruning. Renda et al., 2020.
        arXiv:2003.02389.
    """

    def __init__(
        self,
        ratios: Sequence[float],
        dense_epochs: int,
        epochs_per_round: int,
        method: str = "unstructured",
        rewind: str = "lr",
        results_dir: str | None = None,
    ):
        super().__init__()

        if method not in _METHODS:
            raise ValueError(f"prune.method must be one of {', '.join(_METHODS)}; got {method!r}.")
        if rewind not in _REWIND:
            raise ValueError(f"prune.rewind must be one of {', '.join(_REWIND)}; got {rewind!r}.")
        ratios = [float(r) for r in ratios]
        if any(not 0.0 <= r < 1.0 for r in ratios):
            raise ValueError(f"prune ratios must lie in [0, 1); got {ratios}.")
        if any(b <= a for a, b in zip(ratios, ratios[1:])):
            raise ValueError(f"prune ratios must increase from round to round; got {ratios}.")
        if dense_epochs < 1:
            raise ValueError(f"prune.dense_epochs must be at least 1; got {dense_epochs}.")
        if ratios and epochs_per_round < 1:
            raise ValueError(f"prune.epochs_per_round must be at least 1; got {epochs_per_round}.")

        self.ratios = ratios
        self.dense_epochs = int(dense_epochs)
        self.epochs_per_round = int(epochs_per_round)
        self.method = method
        self.rewind = rewind
        self.results_dir = Path(results_dir) if results_dir is not None else None

        self.round = 0
        self.rows: list[dict[str, Any]] = []
        self.best_val = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.initial_state: dict[str, torch.Tensor] | None = None
        self.dense_total: int | None = None
        self.round_seconds = 0.0
        self._clock = time.perf_counter()
        self._finished = False

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: the dense round plus every fine-tuning round."""
        return self.dense_epochs + len(self.ratios) * self.epochs_per_round

    def round_start_epoch(self, round_index: int) -> int:
        """Return the first epoch of round `round_index`."""
        if round_index == 0:
            return 0
        return self.dense_epochs + (round_index - 1) * self.epochs_per_round

    # ----------------------------------------------------------------------------------------
    # Lightning hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.fast_dev_run:
            return
        if trainer.max_epochs != self.total_epochs:
            raise ValueError(
                f"trainer.max_epochs is {trainer.max_epochs}, but the prune schedule needs "
                f"{self.total_epochs} epochs ({self.dense_epochs} dense + {len(self.ratios)} rounds x "
                f"{self.epochs_per_round}). Leave trainer.max_epochs unset (null) so that it is derived."
            )
        pl_module.round_epochs = self.dense_epochs if self.round == 0 else self.epochs_per_round

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dense_total is None:
            self.dense_total = count_parameters(pl_module.cnf).total
        if self.rewind == "weights" and self.initial_state is None:
            self.initial_state = _cpu_state(pl_module.cnf)
        self._clock = time.perf_counter()

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        next_round = self.round + 1
        if trainer.fast_dev_run:
            return
        if next_round <= len(self.ratios) and trainer.current_epoch == self.round_start_epoch(next_round):
            self._finish_round(trainer, pl_module)
            self._start_round(trainer, pl_module, next_round)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/nll")
        if value is None:
            return
        value = float(value)
        # Ties keep the earlier epoch; a NaN never counts as better.
        if value < self.best_val:
            self.best_val = value
            self.best_epoch = trainer.current_epoch
            self.best_state = _cpu_state(pl_module.cnf)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        if not self._finished and trainer.current_epoch >= self.total_epochs:
            self._finish_round(trainer, pl_module)
            self._finished = True
            self._log_table()

    # ----------------------------------------------------------------------------------------
    # Rounds

    def _finish_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore the round's best weights, test them, and record the round's row."""
        self.round_seconds += time.perf_counter() - self._clock
        if self.best_state is not None:
            pl_module.cnf.load_state_dict(self.best_state)

        counts = count_parameters(pl_module.cnf)
        dense_total = self.dense_total or counts.total
        row: dict[str, Any] = {
            "round": self.round,
            "target_ratio": 0.0 if self.round == 0 else self.ratios[self.round - 1],
            "prune_ratio": 1.0 - counts.nonzero / dense_total,
            "nonzero_params": counts.nonzero,
            "total_params": dense_total,
            "val_nll": self.best_val,
            "test_nll": self._test_nll(trainer, pl_module),
            "best_epoch": self.best_epoch,
            "epochs": self.dense_epochs if self.round == 0 else self.epochs_per_round,
            "wall_seconds": round(self.round_seconds, 3),
        }
        for callback in trainer.callbacks:
            hook = getattr(callback, "on_prune_round_end", None)
            if callable(hook):
                hook(trainer, pl_module, row)

        self.rows.append(row)
        self._publish(trainer, row)
        if self.results_dir is not None:
            # Collective in distributed runs, so it stays outside the rank-zero-only publish.
            trainer.save_checkpoint(self.results_dir / "rounds" / f"round_{row['round']:02d}.ckpt", weights_only=True)

    def _start_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule, round_index: int) -> None:
        target = self.ratios[round_index - 1]
        with torch.no_grad():
            if self.method == "unstructured":
                prune_unstructured(pl_module.cnf, target, dense_total=self.dense_total)
            else:
                prune_structured(pl_module.cnf, target, dense_total=self.dense_total)
            if self.rewind == "weights":
                rewind_weights(pl_module.cnf, self.initial_state)

        self.round = round_index
        self.best_val = math.inf
        self.best_epoch = -1
        self.best_state = None
        self.round_seconds = 0.0
        self._clock = time.perf_counter()

        # Learning-rate rewinding: a new optimizer and schedule, as at the start of training.
        pl_module.round_epochs = self.epochs_per_round
        trainer.strategy.setup_optimizers(trainer)
        with torch.no_grad():
            apply_masks(pl_module.cnf, trainer.optimizers[0])

    @torch.no_grad()
    def _test_nll(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        datamodule = trainer.datamodule
        if datamodule is None:
            return math.nan
        datamodule.setup("test")
        was_training = pl_module.training
        pl_module.eval()
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[]), pl_module.divergence_for("test"):
            torch.manual_seed(pl_module._step_seed(f"round{self.round}/test", 0))
            for batch in datamodule.test_dataloader():
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.to(pl_module.device, pl_module.dtype)
                total += float(-pl_module.cnf.log_prob(x).sum())
                count += len(x)
        pl_module.train(was_training)

        return total / max(count, 1)

    @rank_zero_only
    def _publish(self, trainer: pl.Trainer, row: Mapping[str, Any]) -> None:
        metrics = {
            "prune/round": float(row["round"]),
            "prune/ratio": float(row["prune_ratio"]),
            "prune/nonzero_params": float(row["nonzero_params"]),
            "prune/val_nll": float(row["val_nll"]),
            "prune/test_nll": float(row["test_nll"]),
        }
        for key, value in row.items():
            if key not in {"round", "prune_ratio", "nonzero_params", "val_nll", "test_nll"} and isinstance(value, (int, float)):
                metrics[f"round/{key}"] = float(value)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

        log.info(
            "round %d: prune ratio %.2f %% (target %.2f %%), nonzero params %d of %d, val NLL %.4f, test NLL %.4f",
            row["round"], 100 * row["prune_ratio"], 100 * row["target_ratio"], row["nonzero_params"],
            row["total_params"], row["val_nll"], row["test_nll"],
        )
        if self.results_dir is not None:
            write_results(self.results_dir, self.rows)

    @rank_zero_only
    def _log_table(self) -> None:
        header = f"{'round':>5} {'prune %':>8} {'nonzero':>9} {'val NLL':>9} {'test NLL':>9}"
        lines = [header] + [
            f"{r['round']:>5} {100 * r['prune_ratio']:>8.2f} {r['nonzero_params']:>9} {r['val_nll']:>9.4f} {r['test_nll']:>9.4f}"
            for r in self.rows
        ]
        log.info("prune rounds:\n%s", "\n".join(lines))

    # ----------------------------------------------------------------------------------------
    # Checkpointed state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "ratios": list(self.ratios),
            "rows": copy.deepcopy(self.rows),
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "initial_state": self.initial_state,
            "dense_total": self.dense_total,
            "round_seconds": self.round_seconds + time.perf_counter() - self._clock,
            "finished": self._finished,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if [float(r) for r in state_dict["ratios"]] != self.ratios:
            raise ValueError(
                f"the checkpoint was written with prune ratios {state_dict['ratios']}, but this run "
                f"asks for {self.ratios}. Resume with the same prune config, or start a new run."
            )
        self.round = int(state_dict["round"])
        self.rows = list(state_dict["rows"])
        self.best_val = float(state_dict["best_val"])
        self.best_epoch = int(state_dict["best_epoch"])
        self.best_state = state_dict["best_state"]
        self.initial_state = state_dict["initial_state"]
        self.dense_total = state_dict["dense_total"]
        self.round_seconds = float(state_dict["round_seconds"])
        self._finished = bool(state_dict["finished"])
        self._clock = time.perf_counter()
