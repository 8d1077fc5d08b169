"""Atomic writes of checkpoints and result tables, so that a killed run never leaves a torn file."""

__all__ = ["AtomicCheckpointIO", "atomic_write_bytes", "write_results"]

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`.

    A reader sees either the old file or the complete new one, even if the process is killed
    in the middle of the write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes each checkpoint with `atomic_write_bytes`."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options; got {storage_options!r}.")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(folder: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> tuple[Path, Path]:
    """Write `rows` to `folder/results.json` and `folder/results.csv`, each atomically.

    The CSV columns are the union of the rows' keys in first-seen order; a missing value is
    an empty cell. Non-finite floats become `null` in the JSON file.

    Returns:
        The paths of the JSON and CSV files.
    """
    folder = Path(folder)
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)

    json_path = folder / "results.json"
    clean = [{key: _json_value(value) for key, value in row.items()} for row in rows]
    atomic_write_bytes(json_path, (json.dumps(clean, indent=2) + "\n").encode())

    csv_path = folder / "results.csv"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(csv_path, text.getvalue().encode())

    return json_path, csv_path
