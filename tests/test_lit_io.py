"""Tests of the atomic writers of checkpoints and result tables."""

import csv
import json
import math
import os

import pytest
import torch

from sparse_cnf.lit.io import AtomicCheckpointIO, atomic_write_bytes, write_results


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")

    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")

    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_checkpoint_io_round_trip(tmp_path):
    state = {"state_dict": {"w": torch.arange(3.0)}, "epoch": 2}
    io = AtomicCheckpointIO()
    io.save_checkpoint(state, tmp_path / "last.ckpt")

    loaded = io.load_checkpoint(tmp_path / "last.ckpt")

    assert loaded["epoch"] == 2
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))


def test_checkpoint_io_rejects_storage_options(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"a": 1})


def test_write_results_columns_union(tmp_path):
    rows = [{"round": 0, "val_nll": 1.5}, {"round": 1, "val_nll": math.inf, "good_2std": 80.0}]
    json_path, csv_path = write_results(tmp_path, rows)

    with csv_path.open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["round", "val_nll", "good_2std"]
    assert table[0]["good_2std"] == ""
    assert table[1]["good_2std"] == "80.0"
    assert json.loads(json_path.read_text())[1]["val_nll"] is None
