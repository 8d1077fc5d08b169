"""Workflow tests of `sparse-cnf-train`: a real Trainer on tiny data, resume, sweeps, wandb."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparse_cnf.cli.common import compose
from sparse_cnf.cli.train import train

REPO = Path(__file__).resolve().parents[1]
SHARED_MINIBOONE = REPO.parent / "shared" / "data" / "miniboone" / "val.npy"

# Toy data and a model small enough that an epoch takes a fraction of a second.
TINY_DATA = ["dataset.n_train=256", "dataset.n_val=128", "dataset.n_test=128", "dataset.batch_size=64"]
TINY = [
    "model.hidden=[16,16]",
    "solver.rtol=1e-4",
    "solver.atol=1e-4",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "analysis.modes.num_samples=400",
    "analysis.modes.num_sets=2",
    "analysis.plots.enabled=false",
]


def _run(tmp_path: Path, *overrides: str, logger: str = "none") -> float:
    data = [] if any(o.startswith("dataset=") for o in overrides) else TINY_DATA
    return train(compose([*data, *TINY, f"logger={logger}", f"run_dir={tmp_path}", *overrides]))


def _rows(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "results.json").read_text())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_fast_dev_run(tmp_path):
    _run(tmp_path, "trainer=debug", "prune=default")

    assert not (tmp_path / "results.json").exists()


def test_dense_run_writes_results(tmp_path):
    val_nll = _run(tmp_path, "epochs=2", "prune=default")
    rows = _rows(tmp_path)

    assert len(rows) == 1
    assert rows[0]["val_nll"] == pytest.approx(val_nll)
    assert torch.isfinite(torch.tensor(rows[0]["test_nll"]))
    assert 0.0 <= rows[0]["good_2std"] <= 100.0
    assert (tmp_path / "results.csv").is_file()
    assert (tmp_path / "rounds" / "round_00.ckpt").is_file()


def test_last_checkpoint_every_epoch(tmp_path):
    # A large learning rate makes validation NLL worse in later epochs, so the best checkpoint
    # stops moving; last.ckpt must still be the final epoch.
    _run(tmp_path, "epochs=4", "prune=default", "optimizer.lr=0.5")
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)

    assert last["epoch"] == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("last")) == ["last.ckpt"]


def test_load_from_checkpoint_without_arguments(tmp_path):
    from sparse_cnf.lit import CNFSystem

    _run(tmp_path, "epochs=1", "prune=default")
    system = CNFSystem.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    x = torch.randn(5, 2)

    assert system(x).shape == (5,)


def test_resume_equals_uninterrupted(tmp_path):
    common = ["prune=default", "trainer.deterministic=true", "scheduler=multistep", "scheduler.milestones=[1]"]
    _run(tmp_path / "straight", "epochs=2", *common)
    _run(tmp_path / "split", "epochs=1", *common)
    _run(tmp_path / "split", "epochs=2", *common)

    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    split = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)
    assert split["epoch"] == straight["epoch"] == 1
    assert split["global_step"] == straight["global_step"]
    assert split["lr_schedulers"][0]["last_epoch"] == straight["lr_schedulers"][0]["last_epoch"]
    for key, value in straight["state_dict"].items():
        assert torch.equal(split["state_dict"][key], value), key
    straight_adam = straight["optimizer_states"][0]["state"]
    split_adam = split["optimizer_states"][0]["state"]
    for index, state in straight_adam.items():
        assert torch.equal(split_adam[index]["exp_avg"], state["exp_avg"]), index


def test_resume_from_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        _run(tmp_path, "ckpt_path=nope.ckpt")


@pytest.mark.parametrize(("override", "pattern"), [
    ("solver.method=dopri55", "dopri55"),
    ("solver.rtol=-1e-5", "rtol"),
    ("model.activation=tanhh", "tanhh"),
    ("model.field=resnet", "resnet"),
    ("resume=maybe", "resume"),
    ("torch_threads=0", "torch_threads"),
])
def test_bad_value_fails_before_training(tmp_path, override, pattern):
    with pytest.raises(ValueError, match=pattern):
        _run(tmp_path, override)

    assert not (tmp_path / "checkpoints").exists()


def test_missing_table_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        _run(tmp_path, "dataset=table", f"dataset.path={tmp_path / 'missing.npy'}")


def test_table_wrong_column_count(tmp_path):
    import numpy as np

    path = tmp_path / "table.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 3)))

    with pytest.raises(ValueError, match="expected_dim"):
        _run(tmp_path / "run", "dataset=table", f"dataset.path={path}", "dataset.expected_dim=4")


def test_max_epochs_mismatch_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="max_epochs"):
        _run(tmp_path, "trainer.max_epochs=7")


def test_wandb_offline_run(tmp_path, monkeypatch):
    for variable in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(variable, raising=False)
    # Any attempt to reach a server fails at once instead of hanging.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    _run(tmp_path, "epochs=1", "prune=default", logger="wandb")

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].glob("*.wandb"))


def test_wandb_resume_keeps_run_id(tmp_path, monkeypatch):
    for variable in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    _run(tmp_path, "epochs=1", "prune=default", logger="wandb")
    _run(tmp_path, "epochs=2", "prune=default", logger="wandb")

    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    # wandb names a folder offline-run-TIME-ID, with a suffix when two share the same second.
    assert all(f"-{run_id}" in run.name for run in runs)


@pytest.mark.skipif(not SHARED_MINIBOONE.is_file(), reason=f"real MINIBOONE rows not found at {SHARED_MINIBOONE}")
def test_real_miniboone_nll_falls(tmp_path):
    overrides = [
        "dataset=table", f"dataset.path={SHARED_MINIBOONE}", "dataset.batch_size=256",
        "model=concatsquash", "model.hidden=[64,64]", "solver.rtol=1e-3", "solver.atol=1e-3",
        "optimizer.lr=2e-3", "epochs=3", "prune=default", "analysis.modes.enabled=false",
    ]
    _run(tmp_path, *overrides, logger="csv")
    with (tmp_path / "csv" / "version_0" / "metrics.csv").open() as handle:
        val_nll = [float(row["val/nll"]) for row in csv.DictReader(handle) if row.get("val/nll")]
    rows = _rows(tmp_path)

    assert len(val_nll) == 3
    assert all(math.isfinite(v) for v in val_nll)
    assert val_nll[-1] < val_nll[0]
    assert math.isfinite(rows[0]["test_nll"])


@pytest.mark.slow
def test_multirun_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "sparse_cnf.cli.train", "-m", "seed=0,1", *TINY_DATA, *TINY, "logger=none", "epochs=1", "prune=default", "torch_threads=1",
        f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})

    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert (sweep / job / "results.json").is_file()
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()


def _wandb_records(path: Path) -> list[bytes]:
    """Split an offline `.wandb` file into its protobuf records.

    The file is a 7-byte header followed by LevelDB-style log blocks of 32 KiB. Each record is a
    7-byte header (CRC, length, type) and its payload. Types 2, 3 and 4 are the first, middle
    and last fragments of a record split across blocks.
    """
    import struct

    data = path.read_bytes()
    position, block, pending, records = 7, 32768, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        payload = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            break
        if kind == 1:
            records.append(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            records.append(pending + payload)
    return records


def _wandb_run_summary(run_dir: Path) -> dict:
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/*.wandb")
    summary = {}
    for raw in _wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            summary.update(name=record.run.display_name, group=record.run.run_group)
        elif kind == "exit":
            summary["exit_code"] = record.exit.exit_code
    return summary


@pytest.mark.slow
def test_sweep_survives_failed_job_and_marks_it(tmp_path):
    sweep = tmp_path / "sweep" / "run"
    command = [
        sys.executable, "-m", "sparse_cnf.cli.train", "-m", "solver.max_num_steps=1,10000", *TINY_DATA, *TINY,
        "logger=wandb", "epochs=1", "prune=default", "torch_threads=1", f"hydra.sweep.dir={sweep}",
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)

    assert result.returncode != 0
    assert "step limit" in result.stderr
    assert (sweep / "1" / "results.json").is_file()
    failed, finished = _wandb_run_summary(sweep / "0"), _wandb_run_summary(sweep / "1")
    assert failed["exit_code"] == 1
    assert finished["exit_code"] == 0
    assert failed["group"] == finished["group"] == "sweep/run"
    assert "solver.max_num_steps=1," in failed["name"]
    assert "solver.max_num_steps=10000" in finished["name"]


def test_missing_dataset_path_names_key(tmp_path):
    with pytest.raises(ValueError, match=r"dataset.path is required.*dataset.path="):
        _run(tmp_path, "dataset=table")


def test_float64_data_needs_float64_precision(tmp_path):
    with pytest.raises(ValueError, match="trainer.precision=64-true"):
        _run(tmp_path, "dataset.dtype=float64")


def test_zero_epochs_names_key(tmp_path):
    with pytest.raises(ValueError, match=r"^epochs \(of dense training\) must be at least 1"):
        _run(tmp_path, "epochs=0")


def test_finished_run_is_not_trained_again(tmp_path):
    first = _run(tmp_path, "epochs=1", "prune.epochs_per_round=1", "prune.schedule.ratios=[0.5]")
    before = (tmp_path / "results.json").read_text()
    last = (tmp_path / "checkpoints" / "last.ckpt").stat().st_mtime_ns

    again = _run(tmp_path, "epochs=1", "prune.epochs_per_round=1", "prune.schedule.ratios=[0.5]")

    assert again == first
    assert (tmp_path / "results.json").read_text() == before
    assert (tmp_path / "checkpoints" / "last.ckpt").stat().st_mtime_ns == last


def test_error_is_written_to_run_log(tmp_path, caplog):
    with pytest.raises(ValueError):
        _run(tmp_path, "solver.method=dopri55")

    assert any("run failed: ValueError" in record.getMessage() for record in caplog.records)


def test_cli_config_error_is_one_line(tmp_path):
    command = [sys.executable, "-m", "sparse_cnf.cli.train", "solver.method=dopri55", f"hydra.run.dir={tmp_path}"]
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    output = result.stdout + result.stderr

    assert result.returncode == 2
    assert "Traceback" not in output
    assert "run failed: ValueError: `solver.method` must be one of" in output
    assert "got 'dopri55'" in (tmp_path / "train.log").read_text()


def test_no_wandb_folders_without_wandb(tmp_path):
    _run(tmp_path, "trainer=debug", "prune=default")

    assert not (tmp_path / "wandb").exists()
