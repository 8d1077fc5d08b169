"""LightningDataModule that serves toy, user-table, MAF and MNIST data with seeded splits and batch order."""

__all__ = ["DATASETS", "EpochSampler", "FlowDataModule"]

import hashlib
from collections.abc import Callable, Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .images import dequantize, load_mnist
from .table import fit_standardizer, load_table, split_rows
from .tabular import MAF_DATASETS, MAF_DIMS, load_maf
from .toy import TOY_DATASETS, make_toy, mode_statistics

DATASETS: tuple[str, ...] = (*TOY_DATASETS, "table", *MAF_DATASETS, "mnist")
"""Values accepted by `FlowDataModule(name=...)`."""

_SPLITS = ("train", "val", "test")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_MNIST_SHAPE = (1, 28, 28)


def _derived_seed(seed: int, *keys: int) -> int:
    # Independent streams per split: changing n_val leaves the training points unchanged.
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Random permutation of the sample indices that depends only on (seed, epoch).

    Lightning calls `set_epoch` before every training epoch, also after a resume, so a resumed
    run gets the same batches as an uninterrupted one.

    Args:
        num_samples: number of samples N.
        seed: seed of the permutations, >= 0.
    """

    def __init__(self, num_samples: int, seed: int):
        super().__init__()

        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self._epoch_listeners: list[Callable[[int], None]] = []

    def add_epoch_listener(self, listener: Callable[[int], None]) -> None:
        """Register `listener(epoch)`, called by every `set_epoch`."""
        self._epoch_listeners.append(listener)

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of `epoch`."""
        self.epoch = epoch
        for listener in self._epoch_listeners:
            listener(epoch)

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)

        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples


class _Rows(Dataset):
    """Rows of a (N, D) tensor; a batch is a (B, D) tensor."""

    def __init__(self, data: Tensor):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Tensor:
        return self.data[index]

    def __getitems__(self, indices: Sequence[int]) -> Tensor:
        return self.data[torch.as_tensor(indices)]


class _DequantizedImages(Dataset):
    """8-bit images with uniform noise that depends only on (seed, epoch, index)."""

    def __init__(self, images: Tensor, seed: int, dtype: torch.dtype, flatten: bool):
        self.images = images
        self.seed = seed
        self.dtype = dtype
        self.flatten = flatten
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        image = self.images[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        noise = torch.from_numpy(rng.random(tuple(image.shape))).to(self.dtype)
        x = dequantize(image, noise)

        return x.flatten() if self.flatten else x

    def __getitems__(self, indices: Sequence[int]) -> Tensor:
        return torch.stack([self[i] for i in indices])


def _collate(batch: Tensor | list[Tensor]) -> Tensor:
    return batch if isinstance(batch, Tensor) else torch.stack(batch)


def _fingerprint(arrays: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for split, array in arrays.items():
        contiguous = array.detach().cpu().contiguous()
        digest.update(f"{split}:{tuple(contiguous.shape)}:{contiguous.dtype};".encode())
        digest.update(contiguous.numpy().tobytes())

    return digest.hexdigest()


class FlowDataModule(pl.LightningDataModule):
    """Train, validation and test data for a flow, built from plain config values.

    Batches are tensors of shape (B, D), or (B, 1, 28, 28) for MNIST without `flatten`.

    - Toy sets (`TOY_DATASETS`): `n_train`, `n_val`, `n_test` points drawn with seeds derived
      from `seed`. With `normalize`, every split is shifted and scaled by one scalar mean and
      one scalar std of the training points, so shapes keep their aspect ratio. Mode means
      and covariances come from the labelled training points after normalization.
    - `table`: the file `path` read by `load_table` (`delimiter`, `header`, `nonfinite`,
      `constant`, `expected_dim`), split by `val_fraction` and `test_fraction` with `seed`,
      and standardized per column with training statistics.
    - MAF sets (`power`, `gas`, `hepmass`, `miniboone`, `bsds300`): `load_maf(name, root)`
      with the published splits; the fractions are not used.
    - `mnist`: IDX files in `root`. The test set is the official one, and a `val_fraction`
      share of the training images is held out with `seed`. Pixels get uniform dequantization
      to [0, 1), with noise fixed per (seed, epoch, image) in training and per image in
      evaluation.

    Args:
        name: one of `DATASETS`.
        path: table file for `name="table"`.
        root: data folder for the MAF sets and MNIST.
        n_train: toy training points.
        n_val: toy validation points.
        n_test: toy test points.
        seed: seed of toy sampling, table and MNIST splits and the training batch order, >= 0.
        batch_size: training batch size.
        eval_batch_size: validation and test batch size; None uses `batch_size`.
        num_workers: DataLoader worker processes.
        val_fraction: validation share of the rows of a table or of the MNIST training set.
        test_fraction: test share of the rows of a table.
        delimiter: cell delimiter of a text table.
        header: whether a text table has a header line; None detects it.
        nonfinite: rows with NaN or inf in a table: "drop" (with a warning) or "raise".
        constant: constant table columns: "raise" or "drop" (with a warning).
        expected_dim: number of columns a table must have; None accepts any.
        normalize: scale toy data by a scalar mean and std.
        flatten: serve MNIST images as (B, 784) rows.
        dtype: "float32" or "float64".

    Raises:
        ValueError: for an unknown name or dtype, a missing path or root, or an option out
            of range; all checked here, before any data is read.
    """

    def __init__(
        self,
        name: str = "gaussians",
        path: str | None = None,
        root: str | None = None,
        n_train: int = 10_000,
        n_val: int = 2_000,
        n_test: int = 2_000,
        seed: int = 0,
        batch_size: int = 1024,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        delimiter: str = ",",
        header: bool | None = None,
        nonfinite: str = "drop",
        constant: str = "raise",
        expected_dim: int | None = None,
        normalize: bool = True,
        flatten: bool = False,
        dtype: str = "float32",
    ):
        super().__init__()

        self.save_hyperparameters()
        self._check_options()
        self.splits: dict[str, Tensor] | None = None
        self.labels: dict[str, Tensor] | None = None
        self._mode_means: Tensor | None = None
        self._mode_covs: Tensor | None = None
        self._info: dict | None = None
        self._dim: int | None = None

    # ------------------------------------------------------------------------- validation

    def _check_options(self) -> None:
        hp = self.hparams
        if hp.name not in DATASETS:
            raise ValueError(f"dataset.name must be one of {', '.join(DATASETS)}; got {hp.name!r}")
        if hp.dtype not in _DTYPES:
            raise ValueError(f"dataset.dtype must be one of {', '.join(_DTYPES)}; got {hp.dtype!r}")
        if hp.name == "table" and not hp.path:
            raise ValueError("dataset.path is required for dataset.name='table'; set it to a .npy or .csv file")
        if (hp.name in MAF_DATASETS or hp.name == "mnist") and not hp.root:
            raise ValueError(f"dataset.root is required for dataset.name={hp.name!r}; set it to the data folder")

        minimums = {"seed": 0, "batch_size": 1, "num_workers": 0, "n_train": 1, "n_val": 1, "n_test": 1}
        for option, minimum in minimums.items():
            value = hp[option]
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"dataset.{option} must be an integer >= {minimum}; got {value!r}")
        if hp.eval_batch_size is not None and (not isinstance(hp.eval_batch_size, int) or hp.eval_batch_size < 1):
            raise ValueError(f"dataset.eval_batch_size must be null or an integer >= 1; got {hp.eval_batch_size!r}")
        for option in ("val_fraction", "test_fraction"):
            if not 0.0 <= hp[option] < 1.0:
                raise ValueError(f"dataset.{option} must be in [0, 1); got {hp[option]!r}")
        if hp.val_fraction + hp.test_fraction >= 1.0:
            raise ValueError(
                f"dataset.val_fraction + dataset.test_fraction must be below 1; got {hp.val_fraction} + {hp.test_fraction}"
            )

    # ------------------------------------------------------------------------- building the splits

    def setup(self, stage: str | None = None) -> None:
        """Build all three splits once; later calls, for any stage, return at once."""
        if self.splits is not None:
            return

        name = self.hparams.name
        if name in TOY_DATASETS:
            splits, extra = self._setup_toy()
        elif name == "table":
            splits, extra = self._setup_table()
        elif name == "mnist":
            splits, extra = self._setup_mnist()
        else:
            splits, extra = self._setup_maf()

        self.splits = splits
        self._dim = int(np.prod(splits["train"].shape[1:])) if name != "mnist" else int(np.prod(_MNIST_SHAPE))
        self._info = {
            "name": name,
            "dim": self._dim,
            **{f"n_{split}": len(splits[split]) for split in _SPLITS},
            "fingerprint": _fingerprint(splits),
            **extra,
        }

    def _setup_toy(self) -> tuple[dict[str, Tensor], dict]:
        hp = self.hparams
        sizes = {"train": hp.n_train, "val": hp.n_val, "test": hp.n_test}
        toy = {
            split: make_toy(hp.name, sizes[split], _derived_seed(hp.seed, k), with_mode_statistics=False)
            for k, split in enumerate(_SPLITS)
        }

        mean, std = 0.0, 1.0
        if hp.normalize:
            mean, std = toy["train"].x.double().mean().item(), toy["train"].x.double().std().item()
        dtype = _DTYPES[hp.dtype]
        splits = {split: ((data.x.double() - mean) / std).to(dtype) for split, data in toy.items()}
        self.labels = {split: data.labels for split, data in toy.items()}

        num_modes = toy["train"].num_modes
        if num_modes > 0:
            try:
                self._mode_means, self._mode_covs = mode_statistics(splits["train"], self.labels["train"], num_modes)
            except ValueError as error:
                raise ValueError(f"dataset.n_train={hp.n_train} is too small for {hp.name!r}: {error}") from None

        return splits, {"normalization_mean": mean, "normalization_std": std, "num_modes": num_modes}

    def _setup_table(self) -> tuple[dict[str, Tensor], dict]:
        hp = self.hparams
        table = load_table(hp.path, hp.delimiter, hp.header, hp.nonfinite, hp.constant, hp.expected_dim)
        train, val, test = split_rows(table, hp.val_fraction, hp.test_fraction, hp.seed)
        standardize = fit_standardizer(train, hp.constant)
        dtype = _DTYPES[hp.dtype]
        splits = {split: torch.from_numpy(standardize(rows)).to(dtype) for split, rows in zip(_SPLITS, (train, val, test))}

        return splits, {"path": str(hp.path), "n_rows": len(table), "kept_columns": standardize.columns.tolist()}

    def _setup_maf(self) -> tuple[dict[str, Tensor], dict]:
        hp = self.hparams
        arrays = load_maf(hp.name, hp.root)
        dtype = _DTYPES[hp.dtype]

        return {split: torch.from_numpy(array).to(dtype) for split, array in zip(_SPLITS, arrays)}, {"root": str(hp.root)}

    def _setup_mnist(self) -> tuple[dict[str, Tensor], dict]:
        hp = self.hparams
        train_images, _, test_images, _ = load_mnist(hp.root)
        if train_images.shape[1:] != _MNIST_SHAPE[1:]:
            raise ValueError(f"MNIST images must be 28 x 28; got {train_images.shape[1:]}")
        index = np.arange(len(train_images))
        train_index, val_index, _ = split_rows(index, hp.val_fraction, 0.0, hp.seed)

        images = torch.from_numpy(train_images).unsqueeze(1)
        splits = {"train": images[train_index], "val": images[val_index], "test": torch.from_numpy(test_images).unsqueeze(1)}

        return splits, {"root": str(hp.root), "pixel_levels": 256}

    # ------------------------------------------------------------------------- results of setup

    @property
    def dim(self) -> int:
        """Number of dimensions D of one sample (784 for MNIST); reads the data if needed."""
        if self.hparams.name in TOY_DATASETS:
            return 2
        if self.hparams.name in MAF_DIMS:
            return MAF_DIMS[self.hparams.name]
        self.setup()

        return self._dim

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample in a batch: (D,), or (1, 28, 28) for MNIST without `flatten`."""
        if self.hparams.name == "mnist" and not self.hparams.flatten:
            return _MNIST_SHAPE

        return (self.dim,)

    @property
    def mode_means(self) -> Tensor | None:
        """Means of the labelled training points, shape (K, D), or None without modes."""
        self.setup()

        return self._mode_means

    @property
    def mode_covs(self) -> Tensor | None:
        """Covariances of the labelled training points, shape (K, D, D), or None without modes."""
        self.setup()

        return self._mode_covs

    @property
    def info(self) -> dict:
        """Plain values to log with a run: name, dim, split sizes, sha256 fingerprint of the splits."""
        self.setup()

        return dict(self._info)

    # ------------------------------------------------------------------------- loaders

    def _dataset(self, split: str) -> Dataset:
        self.setup()
        if self.hparams.name != "mnist":
            return _Rows(self.splits[split])

        # Evaluation noise uses epoch 0 of its own stream, so every evaluation uses the same noise.
        seed = _derived_seed(self.hparams.seed, _SPLITS.index(split))

        return _DequantizedImages(self.splits[split], seed, _DTYPES[self.hparams.dtype], self.hparams.flatten)

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            collate_fn=_collate,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches in an order set by (seed, epoch) through `EpochSampler`."""
        dataset = self._dataset("train")
        sampler = EpochSampler(len(dataset), self.hparams.seed)
        if isinstance(dataset, _DequantizedImages):
            sampler.add_epoch_listener(dataset.set_epoch)

        return self._loader(dataset, self.hparams.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in stored order."""
        return self._loader(self._dataset("val"), self.hparams.eval_batch_size or self.hparams.batch_size, None)

    def test_dataloader(self) -> DataLoader:
        """Test batches in stored order."""
        return self._loader(self._dataset("test"), self.hparams.eval_batch_size or self.hparams.batch_size, None)
