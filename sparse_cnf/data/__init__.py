"""Toy 2-D sets, user tables, MAF benchmark tables, MNIST and the Lightning data module.

Importing this package does not import Lightning: `FlowDataModule`, `EpochSampler` and
`DATASETS` are loaded from `sparse_cnf.data.datamodule` on first access.
"""

__all__ = [
    "DATASETS",
    "MAF_DATASETS",
    "MAF_DIMS",
    "MAF_FILES",
    "TOY_DATASETS",
    "EpochSampler",
    "FlowDataModule",
    "Standardizer",
    "ToyData",
    "dequantize",
    "discrete_nll",
    "fit_standardizer",
    "load_maf",
    "load_mnist",
    "load_table",
    "make_toy",
    "mode_statistics",
    "read_idx",
    "split_rows",
    "write_idx",
]

import importlib

from .images import dequantize, discrete_nll, load_mnist, read_idx, write_idx
from .table import Standardizer, fit_standardizer, load_table, split_rows
from .tabular import MAF_DATASETS, MAF_DIMS, MAF_FILES, load_maf
from .toy import TOY_DATASETS, ToyData, make_toy, mode_statistics

_LIGHTNING_NAMES = ("DATASETS", "EpochSampler", "FlowDataModule")


def __getattr__(name: str):
    # Lazy import: `import lightning.pytorch` takes seconds, and pure-torch users never need it.
    if name in _LIGHTNING_NAMES:
        return getattr(importlib.import_module(".datamodule", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
