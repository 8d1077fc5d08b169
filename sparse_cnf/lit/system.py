"""The LightningModule that trains a CNF by maximum likelihood and keeps pruned weights at zero."""

__all__ = ["CNFSystem"]

import contextlib
import math
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from torch import Tensor

from sparse_cnf.data.images import discrete_nll
from sparse_cnf.flows import build_cnf
from sparse_cnf.metrics import NLL
from sparse_cnf.pruning import apply_masks

_STAGES = ("train", "val", "test")


class CNFSystem(pl.LightningModule):
    """Train a continuous normalizing flow by minimizing the negative log-likelihood.

    The system is built from plain values only, so `CNFSystem.load_from_checkpoint(path)` needs no
    extra arguments. After every optimizer step it zeroes masked weights and their optimizer state,
    so pruned entries stay exactly 0 under any optimizer, weight decay and momentum included.

    Each step runs under its own random state, seeded by (seed, stage, epoch, batch index). The
    Hutchinson noise therefore does not depend on what ran before the step, which makes a resumed
    run repeat an uninterrupted one.

    Args:
        dim: Data dimension D.
        model: Keyword arguments of `sparse_cnf.flows.build_cnf` (field, hidden, activation, ...).
        solver: Solver options (`sparse_cnf.flows.SolverOptions` keys).
        optimizer: A Hydra config with `_target_` and `_partial_: true` that takes the parameters.
        scheduler: A Hydra config with `_partial_: true` that takes the optimizer; None or an
            empty mapping for a constant learning rate.
        scheduler_interval: "epoch" or "step": when the scheduler steps.
        seed: Base seed of the per-step random state.
        bits_per_dim: Also log `{stage}/bpd`, the bits per dimension of 8-bit images whose
            dequantized values were scaled to [0, 1) (adds D log 256 nats before dividing).
        data: The dataset config the run used. It is stored with the checkpoint so that an
            analysis can rebuild the same data, and the system itself does not read it.
        eval_divergence: Divergence used for validation and test NLL: "exact" gives the
            model's log-likelihood itself rather than a Hutchinson estimate of it, which on 2-D
            data costs little; None uses the training divergence.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models.
        Grathwohl et al., 2019. arXiv:1810.01367.
    """

    def __init__(
        self,
        dim: int,
        model: Mapping[str, Any],
        solver: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        scheduler_interval: str = "epoch",
        seed: int = 0,
        bits_per_dim: bool = False,
        data: Mapping[str, Any] | None = None,
        eval_divergence: str | None = None,
    ):
        super().__init__()

        if eval_divergence not in (None, "exact", "hutchinson"):
            raise ValueError(f"eval_divergence must be null, 'exact' or 'hutchinson'; got {eval_divergence!r}.")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step'; got {scheduler_interval!r}."
            )
        for name, cfg in (("optimizer", optimizer), ("scheduler", scheduler)):
            if cfg and "_target_" not in cfg:
                raise ValueError(
                    f"{name} config has no `_target_`: got {dict(cfg)}. Choose an option of the "
                    f"{name} group (for example {name}=default), or set {name}._target_ to a class path."
                )
        self.save_hyperparameters()
        self.cnf = build_cnf(int(dim), **dict(model), solver=dict(solver))
        # ModuleDict keys may not shadow Module methods such as `train`, hence the suffix.
        self.nll = torch.nn.ModuleDict({f"{stage}_nll": NLL() for stage in _STAGES})
        # Epochs in the current prune round; the prune callback sets it so that a schedule
        # such as cosine annealing can span one round.
        self.round_epochs: int | None = None

    # ----------------------------------------------------------------------------------------
    # Steps

    def forward(self, x: Tensor) -> Tensor:
        """Return log p(x) in nats, shape (B,)."""
        return self.cnf.log_prob(x)

    @contextlib.contextmanager
    def divergence_for(self, stage: str) -> Iterator[None]:
        """Switch every block to `eval_divergence` for a validation or test stage, then back."""
        if stage == "train" or self.hparams.eval_divergence is None:
            yield
            return
        previous = [block.divergence for block in self.cnf.blocks]
        for block in self.cnf.blocks:
            block.divergence = self.hparams.eval_divergence
        try:
            yield
        finally:
            for block, divergence in zip(self.cnf.blocks, previous):
                block.divergence = divergence

    def _step_seed(self, stage: str, batch_idx: int) -> int:
        key = f"{self.hparams.seed}/{stage}/{self.current_epoch}/{batch_idx}".encode()
        return zlib.crc32(key)

    def _shared_step(self, batch: Tensor | tuple | list, batch_idx: int, stage: str) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not torch.isfinite(x).all():
            bad_rows = int((~torch.isfinite(x.flatten(1))).any(dim=1).sum())
            raise ValueError(
                f"{stage} batch {batch_idx} of epoch {self.current_epoch} has {bad_rows} rows with NaN or "
                "inf. Clean the data, or load tables with dataset.nonfinite=drop."
            )

        self.cnf.reset_nfe()
        with torch.random.fork_rng(devices=[]), self.divergence_for(stage):
            torch.manual_seed(self._step_seed(stage, batch_idx))
            log_prob = self.cnf.log_prob(x)
        nll = -log_prob
        if not torch.isfinite(nll).all():
            bad = int((~torch.isfinite(nll)).sum())
            raise FloatingPointError(
                f"{stage} NLL is not finite for {bad} of {nll.numel()} samples at epoch "
                f"{self.current_epoch}, batch {batch_idx}. Check the data for NaN/inf, lower "
                "optimizer.lr, or tighten solver.rtol and solver.atol."
            )

        loss = nll.mean()
        metric = self.nll[f"{stage}_nll"]
        metric.update(nll.detach())
        on_step = stage == "train"
        self.log(f"{stage}/nll", metric, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(x))
        if self.hparams.bits_per_dim:
            dim = self.hparams.dim
            bpd = discrete_nll(loss.detach(), dim) / (dim * math.log(2.0))
            self.log(f"{stage}/bpd", bpd, on_step=on_step, on_epoch=True, batch_size=len(x))
        self.log(f"{stage}/nfe_forward", float(self.cnf.nfe_forward), on_step=on_step, on_epoch=not on_step, batch_size=len(x))

        return loss

    def training_step(self, batch: Tensor | tuple | list, batch_idx: int) -> Tensor:
        return self._shared_step(batch, batch_idx, "train")

    def validation_step(self, batch: Tensor | tuple | list, batch_idx: int) -> Tensor:
        return self._shared_step(batch, batch_idx, "val")

    def test_step(self, batch: Tensor | tuple | list, batch_idx: int) -> Tensor:
        return self._shared_step(batch, batch_idx, "test")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The backward pass has run by now, so the backward counter is complete.
        self.log("train/nfe_backward", float(self.cnf.nfe_backward), on_step=True, on_epoch=False)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)

        optimizer = self.trainer.optimizers[0] if self._trainer is not None else None
        with torch.no_grad():
            apply_masks(self.cnf, optimizer)

    # ----------------------------------------------------------------------------------------
    # Optimization

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(dict(self.hparams.optimizer))(params)
        if not self.hparams.scheduler:
            return optimizer

        scheduler_cfg = dict(self.hparams.scheduler)
        if scheduler_cfg.get("_target_", "").endswith("CosineAnnealingLR") and scheduler_cfg.get("T_max") is None:
            scheduler_cfg["T_max"] = self._round_length()
        scheduler = instantiate(scheduler_cfg)(optimizer)

        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }

    def _round_length(self) -> int:
        if self.round_epochs is not None:
            return max(1, self.round_epochs)
        if self._trainer is not None and self.trainer.max_epochs and self.trainer.max_epochs > 0:
            return self.trainer.max_epochs
        return 1
