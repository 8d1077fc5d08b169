"""Read MNIST from local IDX files and dequantize 8-bit images for density estimation."""

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "dequantize",
    "discrete_nll",
    "load_mnist",
    "read_idx",
    "write_idx",
]

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""IDX file of each MNIST array; each may also be stored gzip-compressed with a `.gz` suffix."""

MNIST_MIRRORS: tuple[str, ...] = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
"""Download locations of the `.gz` files (the first is the mirror torchvision uses)."""

# IDX type codes (third byte of the magic number) and the big-endian dtypes they stand for.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(dtype).newbyteorder(">"): code for code, dtype in _IDX_DTYPES.items()}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed (detected from its first bytes).

    Args:
        path: the file.

    Returns:
        the stored array in native byte order, with the stored shape.

    Raises:
        ValueError: if the file is not a well-formed IDX file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: it starts with {raw[:4]!r}, expected 0x00 0x00 <type> <ndim>")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + dtype.itemsize * math.prod(shape)
    if len(raw) != expected:
        raise ValueError(f"{path}: the header gives shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")

    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an array as an IDX file.

    Args:
        path: the file; compressed with gzip when `compress` is True, or when it is None and
            the name ends in `.gz`.
        array: array of dtype uint8, int8, int16, int32, float32 or float64.
        compress: whether to gzip the file.

    Raises:
        ValueError: for a dtype that IDX cannot store.
    """
    path = Path(path)
    big_endian = np.dtype(array.dtype).newbyteorder(">")
    if big_endian not in _IDX_CODES:
        raise ValueError(f"IDX stores uint8, int8, int16, int32, float32 or float64; got dtype {array.dtype}")

    header = bytes([0, 0, _IDX_CODES[big_endian], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    raw = header + np.ascontiguousarray(array, dtype=big_endian).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate

    found = sorted(entry.name for entry in root.iterdir())[:10] if root.is_dir() else []
    where = f"{root} contains: {', '.join(found)}" if found else f"{root} is empty or does not exist"
    raise FileNotFoundError(
        f"MNIST: expected {root / stem} or {root / stem}.gz, but neither exists; {where}. To get the IDX "
        f"files, download {stem}.gz from {MNIST_MIRRORS[0]} or run `python scripts/download_data.py mnist --root {root}`"
    )


def load_mnist(root: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load the MNIST training and test images and labels from IDX files in `root`.

    Args:
        root: folder with the four files of `MNIST_FILES`, raw or `.gz`.

    Returns:
        train images (N, 28, 28) uint8, train labels (N,) uint8, test images, test labels.

    Raises:
        FileNotFoundError: if a file is missing. The message names the download source.
        ValueError: if a file is not IDX, or images and labels do not match.
    """
    root = Path(root).expanduser()
    arrays = {key: read_idx(_find_idx(root, stem)) for key, stem in MNIST_FILES.items()}

    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"MNIST {split}: expected uint8 images (N, H, W) and N labels; got images {images.dtype} "
                f"{images.shape} and labels {labels.shape}"
            )

    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


def dequantize(images: Tensor, noise: Tensor) -> Tensor:
    """Map 8-bit pixels to [0, 1) with uniform dequantization, y = (x + u) / 256.

    This is FFJORD's scaling (x * 255 + u) / 256 of pixels already in [0, 1]. The logit
    transform FFJORD applies next belongs to the model, not to the data.

    Args:
        images: integer pixels in {0, ..., 255}, any shape.
        noise: u ~ U[0, 1), same shape; its dtype is the output dtype.

    Returns:
        dequantized images in [0, 1), same shape.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
        Grathwohl et al., 2019, arXiv:1810.01367.
    """
    return (images.to(noise.dtype) + noise) / 256.0


def discrete_nll(nll: Tensor, dim: int, levels: int = 256) -> Tensor:
    """Convert the NLL of dequantized data in [0, 1) into the NLL of the 8-bit data.

    A density p on [0, 1)^D scaled by 1/levels bounds the probability of the integer image:
    -log P(x) <= -log p(y) + D log(levels). Divide the result by D log 2 for bits/dim.

    Args:
        nll: negative log-density of dequantized images in nats, any shape.
        dim: number of dimensions D of one image (784 for MNIST).
        levels: number of intensity levels.

    Returns:
        NLL in nats of the discrete images, same shape.
    """
    return nll + dim * math.log(levels)

