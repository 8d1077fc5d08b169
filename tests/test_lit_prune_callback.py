"""Prune-and-fine-tune rounds in a real Trainer: targets, masks, checkpoints, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparse_cnf.cli.common import compose
from sparse_cnf.cli.train import train
from sparse_cnf.lit import CNFSystem, PruneFinetune

TINY = [
    "dataset.n_train=256", "dataset.n_val=128", "dataset.n_test=128", "dataset.batch_size=64",
    "model.hidden=[16,16]", "solver.rtol=1e-4", "solver.atol=1e-4", "logger=none",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "analysis.modes.num_samples=400", "analysis.modes.num_sets=2", "analysis.plots.enabled=false",
]


def _run(run_dir: Path, *overrides: str) -> float:
    return train(compose([*TINY, f"run_dir={run_dir}", *overrides]))


def _ratios(*ratios: float) -> str:
    return f"prune.schedule.ratios=[{','.join(str(r) for r in ratios)}]"


def _masked_weights(state_dict: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [state_dict[key[: -len("_mask")]][~mask] for key, mask in state_dict.items() if key.endswith("weight_mask")]


def test_rounds_meet_target_ratios(tmp_path):
    _run(tmp_path, "epochs=1", "prune.epochs_per_round=1", _ratios(0.3, 0.6))
    rows = json.loads((tmp_path / "results.json").read_text())

    assert [row["round"] for row in rows] == [0, 1, 2]
    assert [row["target_ratio"] for row in rows] == [0.0, 0.3, 0.6]
    for row in rows:
        assert abs(row["prune_ratio"] - row["target_ratio"]) <= 0.005 * max(row["target_ratio"], 1e-9)
        assert row["nonzero_params"] == round((1 - row["prune_ratio"]) * row["total_params"])
        assert row["test_nll"] == row["test_nll"]


def test_round_checkpoints_load_strictly(tmp_path):
    _run(tmp_path, "epochs=1", "prune.epochs_per_round=1", _ratios(0.5))
    checkpoint = tmp_path / "rounds" / "round_01.ckpt"
    state = torch.load(checkpoint, weights_only=True)["state_dict"]

    assert not [key for key in state if key.endswith("_orig")]
    assert all(bool((w == 0).all()) for w in _masked_weights(state))
    system = CNFSystem.load_from_checkpoint(checkpoint, strict=True)
    assert system.cnf.blocks[0].field.layers[0].weight_mask.sum() < system.cnf.blocks[0].field.layers[0].weight_mask.numel()


def test_pruned_weights_stay_zero_while_training(tmp_path):
    _run(tmp_path, "epochs=1", "prune.epochs_per_round=2", _ratios(0.5), "optimizer.weight_decay=1e-2")
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    masked = _masked_weights(last["state_dict"])

    assert sum(w.numel() for w in masked) > 0
    assert all(bool((w == 0.0).all()) for w in masked)


@pytest.mark.filterwarnings("ignore:structured pruning reached")
def test_structured_rounds_remove_neurons(tmp_path):
    _run(tmp_path, "epochs=1", "prune.epochs_per_round=1", "prune.method=structured", _ratios(0.5))
    state = torch.load(tmp_path / "rounds" / "round_01.ckpt", weights_only=True)["state_dict"]
    first = state["cnf.blocks.0.field.layers.0.weight_mask"]

    rows_kept = first.all(dim=1)
    rows_removed = ~first.any(dim=1)
    assert bool((rows_kept | rows_removed).all())
    assert int(rows_removed.sum()) > 0


def test_weight_rewinding_run(tmp_path):
    _run(tmp_path, "epochs=1", "prune.epochs_per_round=1", "prune.rewind=weights", _ratios(0.5))
    rows = json.loads((tmp_path / "results.json").read_text())

    assert len(rows) == 2


def test_resume_with_other_schedule_is_rejected(tmp_path):
    _run(tmp_path, "epochs=1", "prune.epochs_per_round=1", _ratios(0.5))

    with pytest.raises(ValueError, match="prune ratios"):
        _run(tmp_path, "epochs=1", "prune.epochs_per_round=1", _ratios(0.4, 0.6))


def test_callback_rejects_bad_arguments():
    with pytest.raises(ValueError, match="increase"):
        PruneFinetune([0.5, 0.3], dense_epochs=1, epochs_per_round=1)
    with pytest.raises(ValueError, match="prune.method"):
        PruneFinetune([0.5], dense_epochs=1, epochs_per_round=1, method="random")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        PruneFinetune([1.0], dense_epochs=1, epochs_per_round=1)


def _command(run_dir: Path) -> list[str]:
    overrides = [
        *TINY, "dataset.n_train=1024", "epochs=2", "prune.epochs_per_round=2", _ratios(0.3, 0.5, 0.7),
        "trainer.deterministic=true", f"hydra.run.dir={run_dir}",
    ]
    return [sys.executable, "-m", "sparse_cnf.cli.train", *overrides]


def _rows_without_time(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "results.json").read_text())
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]


@pytest.mark.slow
def test_killed_run_resumes_to_same_result(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_command(straight), check=True, capture_output=True, env=env, timeout=600)

    # Kill -9 once the second prune round has started (two rows written: dense and round 1).
    process = subprocess.Popen(_command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        results = killed / "results.json"
        if results.is_file() and len(json.loads(results.read_text())) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed in its second round"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(json.loads((killed / "results.json").read_text())) < 4
    subprocess.run(_command(killed), check=True, capture_output=True, env=env, timeout=600)

    assert _rows_without_time(killed) == _rows_without_time(straight)
    final_straight = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    final_killed = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in final_straight.items():
        assert torch.equal(final_killed[key], value), key
