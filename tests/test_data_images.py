"""Tests for the IDX reader, MNIST loading and uniform dequantization."""

import math

import numpy as np
import pytest
import torch

from sparse_cnf.data.images import MNIST_FILES, dequantize, discrete_nll, load_mnist, read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.random.default_rng(0).normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"

    write_idx(path, array)
    loaded = read_idx(path)

    assert loaded.dtype == array.dtype
    assert np.array_equal(loaded, array)


def test_idx_header_layout(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([7, 2, 1], dtype=np.uint8))

    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def test_idx_rejects_other_files(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04 not idx")

    with pytest.raises(ValueError, match="is not an IDX file"):
        read_idx(path)


def test_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((2, 3, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-1])

    with pytest.raises(ValueError, match=r"shape \(2, 3, 3\)"):
        read_idx(path)


def _write_mnist(root, train: int = 12, test: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(train, 28, 28), dtype=np.uint8)
    write_idx(root / f"{MNIST_FILES['train_images']}.gz", images)
    write_idx(root / f"{MNIST_FILES['train_labels']}.gz", rng.integers(0, 10, size=train, dtype=np.uint8))
    write_idx(root / MNIST_FILES["test_images"], rng.integers(0, 256, size=(test, 28, 28), dtype=np.uint8))
    write_idx(root / MNIST_FILES["test_labels"], rng.integers(0, 10, size=test, dtype=np.uint8))

    return images


def test_load_mnist_gzip_and_raw(tmp_path):
    images = _write_mnist(tmp_path)

    train_images, train_labels, test_images, test_labels = load_mnist(tmp_path)

    assert np.array_equal(train_images, images)
    assert train_labels.shape == (12,)
    assert test_images.shape == (5, 28, 28)
    assert test_labels.dtype == np.uint8


def test_load_mnist_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz.*download_data\.py mnist"):
        load_mnist(tmp_path)


def test_dequantize_stays_in_pixel_bin():
    pixels = torch.arange(256, dtype=torch.uint8).repeat(4)
    noise = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    y = dequantize(pixels, noise)

    assert float(y.min()) >= 0.0
    assert float(y.max()) < 1.0
    assert torch.equal(torch.floor(y * 256).to(torch.uint8), pixels)


def test_discrete_nll_offset():
    nll = torch.tensor([100.0], dtype=torch.float64)

    torch.testing.assert_close(discrete_nll(nll, 784), nll + 784 * math.log(256))
