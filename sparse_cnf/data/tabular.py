"""Load the MAF benchmark tables (POWER, GAS, HEPMASS, MINIBOONE, BSDS300) with their published preprocessing."""

__all__ = ["MAF_ARCHIVE_URL", "MAF_DATASETS", "MAF_DIMS", "MAF_FILES", "load_maf"]

from pathlib import Path

import numpy as np

MAF_ARCHIVE_URL = "https://zenodo.org/record/1161203/files/data.tar.gz"
"""Archive of the preprocessed files published with MAF; it unpacks into a folder `data/`."""

MAF_DATASETS: tuple[str, ...] = ("power", "gas", "hepmass", "miniboone", "bsds300")
"""Names accepted by `load_maf`."""

MAF_DIMS: dict[str, int] = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}
"""Dimension of each set after preprocessing."""

MAF_FILES: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}
"""Files each set reads, relative to the root folder (the archive's `data/` folder)."""

_WHERE_TO_GET = (
    f"download the MAF archive {MAF_ARCHIVE_URL} (Papamakarios et al., 2017), unpack it and pass its "
    "`data` folder as dataset.root, or run `python scripts/download_data.py maf --root ROOT`"
)


# ----------------------------------------------------------------------------- file checks


def _describe_folder(folder: Path) -> str:
    if not folder.is_dir():
        return f"{folder} does not exist"
    names = sorted(entry.name for entry in folder.iterdir())
    if not names:
        return f"{folder} is empty"
    shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")

    return f"{folder} contains: {shown}"


def _require_file(root: Path, relative: str, name: str) -> Path:
    path = root / relative
    if path.is_file():
        return path

    raise FileNotFoundError(
        f"{name.upper()}: expected the preprocessed file {path}, but it is missing; "
        f"{_describe_folder(path.parent)}. To get it, {_WHERE_TO_GET}"
    )


def _wrong_file(path: Path, name: str, problem: str) -> ValueError:
    return ValueError(f"{name.upper()}: {path} is not the MAF-preprocessed file ({problem}). To get it, {_WHERE_TO_GET}")


def _load_npy(path: Path, name: str, columns: int) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        with path.open("rb") as stream:
            start = stream.read(40)
        raise _wrong_file(path, name, f"it is not a NumPy .npy file; it starts with {start!r}") from None
    if data.ndim != 2 or data.shape[1] != columns or not np.issubdtype(data.dtype, np.floating):
        raise _wrong_file(
            path, name, f"expected a float array with {columns} columns, found dtype {data.dtype} and shape {data.shape}"
        )

    return data.astype(np.float64)


def _split_tail(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # MAF convention: the last 10 % of the rows is the test set, and the last 10 % of the
    # remaining rows is the validation set. The row order is kept.
    n_test = int(0.1 * len(data))
    rest, test = data[: len(data) - n_test], data[len(data) - n_test :]
    n_val = int(0.1 * len(rest))

    return rest[: len(rest) - n_val], rest[len(rest) - n_val :], test


def _standardize_with(reference: np.ndarray, *arrays: np.ndarray, ddof: int) -> tuple[np.ndarray, ...]:
    mean, std = reference.mean(axis=0), reference.std(axis=0, ddof=ddof)

    return tuple((array - mean) / std for array in arrays)


# ----------------------------------------------------------------------------- POWER


def _preprocess_power(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # The 8 columns of data.npy are global active power, global reactive power, voltage,
    # global intensity, sub-meterings 1-3 and the time of day. MAF shuffles the rows with
    # RandomState(42), deletes reactive power and intensity, and adds uniform noise of width
    # 0.001 (active power), 0.01 (voltage) and 1 (sub-meterings), drawn in the order voltage,
    # active power, sub-meterings, to break ties between repeated readings.
    rng = np.random.RandomState(42)
    data = data.copy()
    rng.shuffle(data)
    n = len(data)
    data = np.delete(data, [1, 3], axis=1)

    voltage_noise = 0.01 * rng.rand(n, 1)
    active_noise = 0.001 * rng.rand(n, 1)
    submeter_noise = rng.rand(n, 3)
    noise = np.hstack([active_noise, voltage_noise, submeter_noise, np.zeros((n, 1))])
    train, val, test = _split_tail(data + noise)

    # Standardized with the training and validation rows together (population std).
    return _standardize_with(np.vstack([train, val]), train, val, test, ddof=0)


def _load_power(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = _require_file(root, MAF_FILES["power"][0], "power")

    return _preprocess_power(_load_npy(path, "power", columns=8))


# ----------------------------------------------------------------------------- GAS


def _preprocess_gas(columns: list[str], values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # MAF drops the time and the two gas concentrations, then repeatedly removes the first
    # column whose Pearson correlation with another column exceeds 0.98, standardizes with
    # the whole table (sample std, ddof=1, as pandas computes it) and splits off the tail.
    keep = [i for i, column in enumerate(columns) if column not in ("Time", "Meth", "Eth")]
    data = values[:, keep].astype(np.float64)

    while True:
        correlated = (np.corrcoef(data, rowvar=False) > 0.98).sum(axis=1) > 1
        if not correlated.any():
            break
        data = np.delete(data, np.flatnonzero(correlated)[0], axis=1)

    (data,) = _standardize_with(data, data, ddof=1)

    return _split_tail(data)


def _read_gas_pickle(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        import pandas
    except ImportError:
        raise ImportError(
            f"GAS: reading {path} needs pandas, because MAF stored it as a pickled pandas DataFrame; "
            "run `pip install pandas`"
        ) from None

    # NOTE: unpickling runs code stored in the file; read only the archive from MAF_ARCHIVE_URL.
    # Whether the newest pandas still reads this 2017 pickle was not checked here.
    try:
        frame = pandas.read_pickle(path)
    except Exception as error:  # pandas raises many unrelated types for a bad pickle
        raise _wrong_file(path, "gas", f"pandas could not read it: {error}") from None
    if not isinstance(frame, pandas.DataFrame) or not {"Time", "Meth", "Eth"} <= set(frame.columns):
        raise _wrong_file(path, "gas", "expected a DataFrame with columns Time, Meth, Eth and the sensors")

    return [str(column) for column in frame.columns], frame.to_numpy(dtype=np.float64)


def _load_gas(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = _require_file(root, MAF_FILES["gas"][0], "gas")

    return _preprocess_gas(*_read_gas_pickle(path))


# ----------------------------------------------------------------------------- HEPMASS


def _read_hepmass_csv(path: Path) -> np.ndarray:
    # MAF reads these files with pandas.read_csv(index_col=False): the header names the
    # columns, and cells past the last named column (a trailing delimiter) are ignored.
    with path.open() as stream:
        names = stream.readline().rstrip("\r\n").split(",")
        first = stream.readline().rstrip("\r\n").split(",")
    if len(names) < 2 or len(first) < 2:
        raise _wrong_file(path, "hepmass", "expected a comma-separated header line and data rows")

    width = min(len(names), len(first) - (first[-1].strip() == ""))
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(width), ndmin=2)
    except ValueError as error:
        raise _wrong_file(path, "hepmass", f"a cell is not a number: {error}") from None

    return data


def _preprocess_hepmass(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Keep the signal rows (label 1 in column 0) and drop the label. In the published test file
    # the last remaining column is dropped as well, because that file has one column too many.
    train = train[train[:, 0] == 1][:, 1:]
    test = test[test[:, 0] == 1][:, 1:-1]
    if len(train) < 2 or len(test) < 1:
        raise ValueError(f"HEPMASS: found {len(train)} training and {len(test)} test rows with label 1; expected many")
    if test.shape[1] > train.shape[1]:
        raise ValueError(f"HEPMASS: the test file gives {test.shape[1]} features but the training file {train.shape[1]}")

    # Standardize both files with the training rows (sample std, ddof=1, as pandas computes it).
    # The test columns line up with the first training columns.
    mean, std = train.mean(axis=0), train.std(axis=0, ddof=1)
    width = test.shape[1]
    train, test = (train - mean) / std, (test - mean[:width]) / std[:width]

    # Drop every feature whose smallest value occurs more than 5 times in the training rows
    # (MAF's rule for features with too many repeated values).
    discrete = [j for j in range(train.shape[1]) if np.count_nonzero(train[:, j] == train[:, j].min()) > 5]
    train = np.delete(train, discrete, axis=1)
    test = np.delete(test, [j for j in discrete if j < width], axis=1)
    if test.shape[1] != train.shape[1]:
        raise ValueError(f"HEPMASS: the test file gives {test.shape[1]} features but the training file {train.shape[1]}")

    # The validation set is the last 10 % of the training rows.
    n_val = int(0.1 * len(train))

    return train[: len(train) - n_val], train[len(train) - n_val :], test


def _load_hepmass(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train_path = _require_file(root, MAF_FILES["hepmass"][0], "hepmass")
    test_path = _require_file(root, MAF_FILES["hepmass"][1], "hepmass")

    return _preprocess_hepmass(_read_hepmass_csv(train_path), _read_hepmass_csv(test_path))


# ----------------------------------------------------------------------------- MINIBOONE, BSDS300


def _load_miniboone(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # data.npy already has the outlier rows and the 7 features with repeated values removed.
    path = _require_file(root, MAF_FILES["miniboone"][0], "miniboone")
    train, val, test = _split_tail(_load_npy(path, "miniboone", columns=43))

    return _standardize_with(np.vstack([train, val]), train, val, test, ddof=0)


def _load_bsds300(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = _require_file(root, MAF_FILES["bsds300"][0], "bsds300")
    try:
        import h5py
    except ImportError:
        raise ImportError(f"BSDS300: reading {path} needs h5py (HDF5); run `pip install h5py`") from None

    # The file stores the published splits of 8 x 8 patches with one pixel left out (63 values).
    try:
        with h5py.File(path, "r") as file:
            return tuple(np.asarray(file[key], dtype=np.float64) for key in ("train", "validation", "test"))
    except (OSError, KeyError) as error:
        raise _wrong_file(path, "bsds300", f"expected an HDF5 file with train, validation and test: {error}") from None


_LOADERS = {
    "power": _load_power,
    "gas": _load_gas,
    "hepmass": _load_hepmass,
    "miniboone": _load_miniboone,
    "bsds300": _load_bsds300,
}


def load_maf(name: str, root: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load a MAF benchmark set with the published preprocessing and splits.

    POWER: shuffle with seed 42, drop 2 columns, add uniform noise, split the last 10 % off as
    test and the last 10 % of the rest as validation, standardize with train + validation.
    GAS: drop time and concentrations, drop columns correlated above 0.98, standardize, split
    the same way without shuffling. HEPMASS: signal rows only, standardize with the training
    file, drop features with repeated values, validation = last 10 % of the training file.
    MINIBOONE: split as POWER without shuffling, standardize with train + validation.
    BSDS300: the stored splits.

    Args:
        name: one of `MAF_DATASETS`.
        root: the archive's `data` folder, which contains the files listed in `MAF_FILES`.

    Returns:
        train, validation and test arrays, float64, shape (N_split, MAF_DIMS[name]).

    Raises:
        ValueError: for an unknown name, a file that is not the preprocessed one, or a
            result whose dimension differs from `MAF_DIMS[name]`.
        FileNotFoundError: if a file is missing. The message names the download source.
        ImportError: if GAS needs pandas or BSDS300 needs h5py and it is not installed.

    References:
        Masked Autoregressive Flow for Density Estimation, Papamakarios et al., 2017,
        arXiv:1705.07057.
    """
    if name not in _LOADERS:
        raise ValueError(f"MAF dataset name must be one of {', '.join(MAF_DATASETS)}; got {name!r}")

    splits = _LOADERS[name](Path(root).expanduser())
    for split, array in zip(("train", "validation", "test"), splits):
        if array.ndim != 2 or array.shape[1] != MAF_DIMS[name]:
            raise ValueError(
                f"{name.upper()}: the {split} split has shape {array.shape} after preprocessing, but the "
                f"published dimension is {MAF_DIMS[name]}; check the files under {root}. {_WHERE_TO_GET}"
            )

    return splits
