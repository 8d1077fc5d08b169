"""Tests for the MAF loaders on tiny files in the published formats (case D1)."""

import importlib.util

import numpy as np
import pytest

from sparse_cnf.data import tabular
from sparse_cnf.data.tabular import MAF_ARCHIVE_URL, MAF_DATASETS, MAF_DIMS, MAF_FILES, load_maf


def _hepmass_csv(path, rows: int, seed: int, extra_column: bool) -> None:
    # label, 27 features of which f3, f7, ..., f23 take only 3 values, and mass in 5 values:
    # the 7 discrete columns are dropped, leaving 21.
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, 27))
    features[:, 3::4] = rng.integers(0, 3, size=(rows, 6))
    labels = np.arange(rows) % 2
    mass = rng.choice([500.0, 750.0, 1000.0, 1250.0, 1500.0], size=rows)
    names = ["# label", *[f"f{i}" for i in range(27)], "mass"] + (["extra"] if extra_column else [])
    columns = [labels[:, None], features, mass[:, None]] + ([rng.normal(size=(rows, 1))] if extra_column else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.hstack(columns), delimiter=",", header=",".join(names), comments="")


@pytest.mark.parametrize("name", MAF_DATASETS)
def test_maf_empty_folder_names_file_and_source(tmp_path, name):
    with pytest.raises(FileNotFoundError) as error:
        load_maf(name, tmp_path)

    message = str(error.value)
    assert str(tmp_path / MAF_FILES[name][0]) in message
    assert "does not exist" in message
    assert MAF_ARCHIVE_URL in message
    assert "scripts/download_data.py" in message


def test_power_raw_uci_file_is_reported(tmp_path):
    (tmp_path / "power").mkdir()
    (tmp_path / "power" / "household_power_consumption.txt").write_text("Date;Time;Global_active_power\n")

    with pytest.raises(FileNotFoundError, match=r"power/data\.npy.*contains: household_power_consumption\.txt"):
        load_maf("power", tmp_path)


def test_power_text_named_npy_is_reported(tmp_path):
    (tmp_path / "power").mkdir()
    (tmp_path / "power" / "data.npy").write_text("Date;Time;Global_active_power\n16/12/2006;17:24:00;4.216\n")

    with pytest.raises(ValueError, match=r"not a NumPy \.npy file; it starts with b'Date;Time"):
        load_maf("power", tmp_path)


def test_power_wrong_columns_are_reported(tmp_path):
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", np.zeros((50, 6)))

    with pytest.raises(ValueError, match=r"expected a float array with 8 columns.*shape \(50, 6\)"):
        load_maf("power", tmp_path)


def test_power_dims_splits_and_noise(tmp_path):
    (tmp_path / "power").mkdir()
    data = np.random.default_rng(0).normal(size=(200, 8))
    np.save(tmp_path / "power" / "data.npy", data)

    train, val, test = load_maf("power", tmp_path)
    again = load_maf("power", tmp_path)

    assert (train.shape, val.shape, test.shape) == ((162, 6), (18, 6), (20, 6))
    assert np.array_equal(train, again[0])
    np.testing.assert_allclose(np.vstack([train, val]).mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.vstack([train, val]).std(axis=0), 1.0)
    # The time column gets no noise, so its values are an affine image of the input column.
    time = np.sort(np.concatenate([train, val, test])[:, 5])
    assert np.corrcoef(time, np.sort(data[:, 7]))[0, 1] == pytest.approx(1.0, abs=1e-12)


def test_gas_preprocessing_drops_correlated_columns():
    rng = np.random.default_rng(1)
    sensors = rng.normal(size=(300, 10))
    sensors[:, 3] = 2 * sensors[:, 0] + 1e-3 * rng.normal(size=300)
    sensors[:, 7] = sensors[:, 5] + 1e-3 * rng.normal(size=300)
    columns = ["Time", "Meth", "Eth", *[f"s{i}" for i in range(10)]]
    values = np.hstack([rng.normal(size=(300, 3)), sensors])

    train, val, test = tabular._preprocess_gas(columns, values)

    assert (train.shape, val.shape, test.shape) == ((243, 8), (27, 8), (30, 8))
    expected = np.delete(sensors, [0, 5], axis=1)
    expected = (expected - expected.mean(axis=0)) / expected.std(axis=0, ddof=1)
    np.testing.assert_allclose(np.vstack([train, val, test]), expected)


def test_gas_loader_checks_dimension(tmp_path, monkeypatch):
    (tmp_path / "gas").mkdir()
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"stub")
    columns = ["Time", "Meth", "Eth", *[f"s{i}" for i in range(5)]]
    monkeypatch.setattr(tabular, "_read_gas_pickle", lambda path: (columns, np.random.default_rng(0).normal(size=(100, 8))))

    with pytest.raises(ValueError, match="published dimension is 8"):
        load_maf("gas", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("pandas") is not None, reason="pandas is installed")
def test_gas_without_pandas_says_install(tmp_path):
    (tmp_path / "gas").mkdir()
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"stub")

    with pytest.raises(ImportError, match="pip install pandas"):
        load_maf("gas", tmp_path)


@pytest.mark.parametrize("extra_column", [True, False])
def test_hepmass_dims_and_splits(tmp_path, extra_column):
    _hepmass_csv(tmp_path / "hepmass" / "1000_train.csv", 400, seed=0, extra_column=False)
    _hepmass_csv(tmp_path / "hepmass" / "1000_test.csv", 100, seed=1, extra_column=extra_column)

    train, val, test = load_maf("hepmass", tmp_path)

    assert (train.shape, val.shape, test.shape) == ((180, 21), (20, 21), (50, 21))
    np.testing.assert_allclose(np.vstack([train, val]).mean(axis=0), 0.0, atol=1e-12)


def test_miniboone_dims_and_splits(tmp_path):
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", np.random.default_rng(0).normal(size=(100, 43)))

    train, val, test = load_maf("miniboone", tmp_path)

    assert (train.shape, val.shape, test.shape) == ((81, 43), (9, 43), (10, 43))
    np.testing.assert_allclose(np.vstack([train, val]).std(axis=0), 1.0)


@pytest.mark.skipif(importlib.util.find_spec("h5py") is not None, reason="h5py is installed")
def test_bsds300_without_h5py_says_install(tmp_path):
    (tmp_path / "BSDS300").mkdir()
    (tmp_path / "BSDS300" / "BSDS300.hdf5").write_bytes(b"stub")

    with pytest.raises(ImportError, match="pip install h5py"):
        load_maf("bsds300", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("h5py") is None, reason="h5py is not installed")
def test_bsds300_dims_and_splits(tmp_path):
    import h5py

    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as file:
        for key, rows in (("train", 30), ("validation", 5), ("test", 7)):
            file[key] = np.random.default_rng(rows).normal(size=(rows, 63))

    train, val, test = load_maf("bsds300", tmp_path)

    assert (train.shape, val.shape, test.shape) == ((30, 63), (5, 63), (7, 63))


def test_maf_dims_table_complete():
    assert MAF_DIMS == {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}


def test_maf_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="power, gas, hepmass, miniboone, bsds300"):
        load_maf("cifar10", tmp_path)
