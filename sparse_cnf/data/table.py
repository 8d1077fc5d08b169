"""Load user tables (.npy, .csv), split them with a seed and standardize them with training statistics."""

__all__ = ["Standardizer", "fit_standardizer", "load_table", "split_rows"]

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
_NONFINITE_POLICIES = ("drop", "raise")
_CONSTANT_POLICIES = ("raise", "drop")
_MAX_LISTED = 10


def _format_indices(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:_MAX_LISTED])
    if len(indices) > _MAX_LISTED:
        shown += f", ... ({len(indices) - _MAX_LISTED} more)"

    return shown


def _parse_cell(text: str, path: Path, line: int, column: int) -> float:
    # An empty cell is a missing value: it becomes NaN and follows the non-finite row policy.
    if text.strip() == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"{path}: line {line}, column {column} contains {text!r}, which is not a number; "
            f"fix the cell, or pass header=True if line {line} is a header"
        ) from None


def _is_numeric_row(cells: list[str]) -> bool:
    try:
        for cell in cells:
            if cell.strip() != "":
                float(cell)
    except ValueError:
        return False

    return True


def _read_text(path: Path, delimiter: str, header: bool | None) -> np.ndarray:
    with path.open(newline="") as stream:
        rows = [row for row in csv.reader(stream, delimiter=delimiter) if row]
    if not rows:
        raise ValueError(f"{path} contains no rows")

    # header=None: the first row is a header when one of its cells is not a number.
    skip = header if header is not None else not _is_numeric_row(rows[0])
    first_line = 2 if skip else 1
    body = rows[1:] if skip else rows
    if not body:
        raise ValueError(f"{path} contains a header but no data rows")

    width = len(body[0])
    values = np.empty((len(body), width), dtype=np.float64)
    for r, row in enumerate(body):
        if len(row) != width:
            raise ValueError(
                f"{path}: line {r + first_line} has {len(row)} cells but line {first_line} has {width}; "
                f"check the delimiter (got {delimiter!r}) and the row"
            )
        values[r] = [_parse_cell(cell, path, r + first_line, c) for c, cell in enumerate(row)]

    return values


def _read_npy(path: Path) -> np.ndarray:
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable NumPy .npy file ({error})") from None
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(f"{path} must contain real numbers; got dtype {values.dtype}")

    return values.astype(np.float64)


def _drop_nonfinite_rows(values: np.ndarray, path: Path, nonfinite: str) -> np.ndarray:
    finite = np.isfinite(values)
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    if len(bad_rows) == 0:
        return values

    bad_columns = np.flatnonzero(~finite.all(axis=0))
    report = (
        f"{path}: {len(bad_rows)} of {len(values)} rows contain NaN or inf "
        f"(data rows {_format_indices(bad_rows)}, counted from 0 without the header; "
        f"columns {_format_indices(bad_columns)})"
    )
    if nonfinite == "raise":
        raise ValueError(f"{report}; clean these rows or pass nonfinite='drop' to drop them")
    if len(bad_rows) == len(values):
        raise ValueError(f"{report}; no finite row is left")
    warnings.warn(f"{report}; dropped these rows", stacklevel=3)

    return values[finite.all(axis=1)]


def _constant_columns(values: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.ptp(values, axis=0) == 0)


def _drop_constant_columns(values: np.ndarray, path: Path, constant: str) -> np.ndarray:
    columns = _constant_columns(values)
    if len(columns) == 0:
        return values

    report = f"{path}: columns {_format_indices(columns)} are constant, so they have no density to model"
    if constant == "raise":
        raise ValueError(f"{report}; remove them from the file or pass constant='drop' to drop them")
    if len(columns) == values.shape[1]:
        raise ValueError(f"{report}; no column is left")
    warnings.warn(f"{report}; dropped these columns", stacklevel=3)

    return np.delete(values, columns, axis=1)


def load_table(
    path: str | Path,
    delimiter: str = ",",
    header: bool | None = None,
    nonfinite: str = "drop",
    constant: str = "raise",
    expected_dim: int | None = None,
) -> np.ndarray:
    """Load a numeric table of samples (rows) by features (columns) as float64.

    Policy for bad input, applied in this order:

    1. The number of columns must equal `expected_dim` when that is given.
    2. Rows that contain NaN or inf (empty cells count as NaN) are reported by count, row
       indices and columns. With `nonfinite="drop"` they are dropped with a warning; with
       `nonfinite="raise"` the load fails.
    3. Columns with one value in every remaining row are reported by index. With
       `constant="raise"` the load fails, and the message names the fix. With
       `constant="drop"` they are dropped with a warning. A constant column is never standardized into NaN.

    Args:
        path: a `.npy` file with a 2-D real array, or a `.csv`, `.tsv` or `.txt` text table.
        delimiter: cell delimiter of a text table.
        header: whether the first line of a text table is a header; None detects it (the
            first line is a header when one of its cells is not a number).
        nonfinite: policy for rows with NaN or inf, "drop" or "raise".
        constant: policy for constant columns, "raise" or "drop".
        expected_dim: number of columns the file must have, or None to accept any.

    Returns:
        the table, shape (N, D), float64, every entry finite.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: for an unknown suffix or policy, a cell that is not a number, rows of
            unequal length, a wrong number of columns, or a table that the policies reject.
    """
    if nonfinite not in _NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {', '.join(_NONFINITE_POLICIES)}; got {nonfinite!r}")
    if constant not in _CONSTANT_POLICIES:
        raise ValueError(f"constant must be one of {', '.join(_CONSTANT_POLICIES)}; got {constant!r}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"table file {path} not found; check dataset.path")

    suffix = path.suffix.lower()
    if suffix == ".npy":
        values = _read_npy(path)
    elif suffix in _TEXT_SUFFIXES:
        values = _read_text(path, delimiter, header)
    else:
        raise ValueError(f"table file {path} must end in .npy, {', '.join(_TEXT_SUFFIXES)}; got {suffix!r}")

    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"{path} must contain a non-empty 2-D table (rows x columns); got shape {values.shape}")
    if expected_dim is not None and values.shape[1] != expected_dim:
        raise ValueError(
            f"{path} has {values.shape[1]} columns but dataset.expected_dim is {expected_dim}; "
            f"check the file and the delimiter (got {delimiter!r}), or set expected_dim"
        )

    values = _drop_nonfinite_rows(values, path, nonfinite)

    return _drop_constant_columns(values, path, constant)


def split_rows(
    data: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split rows into train, validation and test sets after a seeded permutation.

    The validation and test sets get `int(fraction * N)` rows each; the rest is training.

    Args:
        data: table, shape (N, D).
        val_fraction: share of rows for validation, in [0, 1).
        test_fraction: share of rows for testing, in [0, 1).
        seed: seed of the permutation.

    Returns:
        train, validation and test rows.

    Raises:
        ValueError: if a fraction is out of range or a split would be empty.
    """
    for option, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"dataset.{option} must be in [0, 1); got {fraction}")

    n = len(data)
    n_val, n_test = int(val_fraction * n), int(test_fraction * n)
    n_train = n - n_val - n_test
    if n_train < 1 or (val_fraction > 0 and n_val < 1) or (test_fraction > 0 and n_test < 1):
        raise ValueError(
            f"{n} rows cannot be split with val_fraction={val_fraction} and test_fraction={test_fraction} "
            f"into non-empty sets (train {n_train}, val {n_val}, test {n_test}); use more rows or other fractions"
        )

    order = np.random.default_rng(seed).permutation(n)

    return data[order[:n_train]], data[order[n_train : n_train + n_val]], data[order[n_train + n_val :]]


@dataclass(frozen=True)
class Standardizer:
    """Per-column affine map (x[:, columns] - mean) / std fitted on training rows.

    Attributes:
        mean: column means, shape (D',).
        std: column standard deviations (population, ddof=0), shape (D',), all > 0.
        columns: indices of the kept input columns, shape (D',).
    """

    mean: np.ndarray
    std: np.ndarray
    columns: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Standardize rows `x` of shape (N, D) into shape (N, D')."""
        return (x[:, self.columns] - self.mean) / self.std


def fit_standardizer(train: np.ndarray, constant: str = "raise") -> Standardizer:
    """Fit per-column standardization on training rows.

    A column can vary in the whole table and still be constant on the training rows. Such a
    column would turn into NaN, so it follows the same policy as in `load_table`.

    Args:
        train: training rows, shape (N, D), finite.
        constant: policy for columns constant on the training rows, "raise" or "drop".

    Returns:
        the fitted standardizer.

    Raises:
        ValueError: for an unknown policy, or constant training columns with constant="raise".
    """
    if constant not in _CONSTANT_POLICIES:
        raise ValueError(f"constant must be one of {', '.join(_CONSTANT_POLICIES)}; got {constant!r}")

    flat = _constant_columns(train)
    if len(flat) > 0:
        report = f"columns {_format_indices(flat)} are constant on the {len(train)} training rows"
        if constant == "raise" or len(flat) == train.shape[1]:
            raise ValueError(f"{report}; remove them, use more rows, or pass constant='drop'")
        warnings.warn(f"{report}; dropped these columns", stacklevel=2)

    columns = np.setdiff1d(np.arange(train.shape[1]), flat)
    kept = train[:, columns]

    return Standardizer(kept.mean(axis=0), kept.std(axis=0), columns)
