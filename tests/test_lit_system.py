"""Tests of the Lightning system: non-finite losses, masks under the optimizer, saved hyperparameters."""

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparse_cnf.lit import CNFSystem
from sparse_cnf.pruning import prune_unstructured

MODEL = {"hidden": [8, 8], "activation": "tanh"}
SOLVER = {"method": "dopri5", "rtol": 1e-4, "atol": 1e-4}
ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2, "weight_decay": 1e-2}


def _system(**kwargs) -> CNFSystem:
    return CNFSystem(dim=2, model=MODEL, solver=SOLVER, optimizer=ADAMW, **kwargs)


def _trainer(tmp_path, epochs: int = 1) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )


def _loader(x: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x), batch_size=16)


def test_non_finite_batch_is_rejected(tmp_path):
    x = torch.randn(32, 2)
    x[3, 0] = math.nan

    with pytest.raises(ValueError, match=r"train batch 0 of epoch 0 has 1 rows with NaN.*dataset.nonfinite"):
        _trainer(tmp_path).fit(_system(), _loader(x))


def test_non_finite_nll_names_stage_and_fix(tmp_path, monkeypatch):
    system = _system()
    monkeypatch.setattr(system.cnf, "log_prob", lambda x: torch.full((len(x),), -math.inf, requires_grad=True))

    with pytest.raises(FloatingPointError, match=r"train NLL is not finite for 16 of 16.*optimizer.lr"):
        _trainer(tmp_path).fit(system, _loader(torch.randn(32, 2)))


def test_masked_weights_stay_zero_under_adamw(tmp_path):
    system = _system()
    prune_unstructured(system.cnf, 0.5)
    _trainer(tmp_path, epochs=3).fit(system, _loader(torch.randn(64, 2)))

    for layer in system.cnf.blocks[0].field.prunable_layers():
        assert bool((layer.weight[~layer.weight_mask] == 0.0).all())


def test_step_seed_depends_on_stage_and_batch():
    system = _system()

    assert system._step_seed("train", 0) != system._step_seed("val", 0)
    assert system._step_seed("train", 0) != system._step_seed("train", 1)
    assert system._step_seed("train", 3) == _system()._step_seed("train", 3)


def test_bad_scheduler_interval():
    with pytest.raises(ValueError, match="scheduler_interval"):
        _system(scheduler_interval="batch")


def test_hyperparameters_are_plain():
    system = _system(data={"name": "gaussians"})

    assert system.hparams.model == MODEL
    assert system.hparams.data == {"name": "gaussians"}


def test_eval_divergence_switches_only_for_evaluation():
    system = CNFSystem(dim=2, model={**MODEL, "divergence": "hutchinson"}, solver=SOLVER, optimizer=ADAMW, eval_divergence="exact")
    block = system.cnf.blocks[0]

    with system.divergence_for("val"):
        assert block.divergence == "exact"
    with system.divergence_for("train"):
        assert block.divergence == "hutchinson"
    assert block.divergence == "hutchinson"


def test_exact_evaluation_is_noise_free():
    system = CNFSystem(dim=2, model={**MODEL, "divergence": "hutchinson"}, solver=SOLVER, optimizer=ADAMW, eval_divergence="exact")
    x = torch.randn(16, 2)

    with system.divergence_for("test"):
        first = system.cnf.log_prob(x)
        second = system.cnf.log_prob(x)
    assert torch.equal(first, second)


def test_bad_eval_divergence():
    with pytest.raises(ValueError, match="eval_divergence"):
        _system(eval_divergence="brute_force")


def test_scheduler_without_target_is_rejected():
    with pytest.raises(ValueError, match=r"scheduler config has no `_target_`.*milestones"):
        _system(scheduler={"milestones": [10]})
