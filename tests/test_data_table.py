"""Tests for the user-table loader, the seeded split and the standardization (case D2)."""

import numpy as np
import pytest

from sparse_cnf.data.table import fit_standardizer, load_table, split_rows


def _table_with_faults() -> np.ndarray:
    # 40 rows x 4 columns; column 2 is constant; rows 5, 17 and 30 contain NaN or inf.
    values = np.random.default_rng(0).normal(size=(40, 4))
    values[:, 2] = 7.0
    values[5, 0] = np.nan
    values[17, 3] = np.inf
    values[30, 1] = -np.inf

    return values


def test_table_nonfinite_rows_dropped_with_report(tmp_path):
    path = tmp_path / "t.npy"
    values = _table_with_faults()
    values[:, 2] = np.arange(40)
    np.save(path, values)

    with pytest.warns(UserWarning, match=r"3 of 40 rows contain NaN or inf \(data rows 5, 17, 30") as record:
        table = load_table(path)

    assert "columns 0, 1, 3" in str(record[0].message)
    assert table.shape == (37, 4)
    assert np.isfinite(table).all()


def test_table_nonfinite_raise_policy(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, _table_with_faults())

    with pytest.raises(ValueError, match=r"3 of 40 rows .* nonfinite='drop'"):
        load_table(path, nonfinite="raise")


def test_table_constant_column_raises_with_fix(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, _table_with_faults())

    with pytest.warns(UserWarning, match="3 of 40 rows"):
        with pytest.raises(ValueError, match=r"columns 2 are constant.*constant='drop'"):
            load_table(path)


def test_table_constant_column_dropped_when_asked(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, _table_with_faults())

    with pytest.warns(UserWarning) as record:
        table = load_table(path, constant="drop")

    messages = [str(warning.message) for warning in record]
    assert any("3 of 40 rows" in message for message in messages)
    assert any("columns 2 are constant" in message for message in messages)
    assert table.shape == (37, 3)
    assert np.isfinite(table).all()


def test_table_d2_no_nan_after_standardizing(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, _table_with_faults())

    with pytest.warns(UserWarning):
        table = load_table(path, constant="drop")
    train, val, test = split_rows(table, 0.2, 0.2, seed=0)
    standardize = fit_standardizer(train)

    for rows in (train, val, test):
        assert np.isfinite(standardize(rows)).all()


def test_table_csv_header_and_delimiter(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a;b;c\n1;2;3\n4;5;6.5\n")

    table = load_table(path, delimiter=";")

    np.testing.assert_array_equal(table, [[1, 2, 3], [4, 5, 6.5]])


def test_table_csv_explicit_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,2\n3,4\n5,7\n")

    assert load_table(path, header=True).shape == (2, 2)
    assert load_table(path, header=False).shape == (3, 2)


def test_table_csv_empty_cell_is_nonfinite(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,2\n3,\n5,7\nnan,1\n")

    with pytest.warns(UserWarning, match=r"2 of 4 rows .*data rows 1, 3"):
        table = load_table(path)

    np.testing.assert_array_equal(table, [[1, 2], [5, 7]])


def test_table_csv_text_cell_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,2\n3,x\n")

    with pytest.raises(ValueError, match=r"line 2, column 1 contains 'x'"):
        load_table(path)


def test_table_wrong_column_count(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.random.default_rng(0).normal(size=(10, 5)))

    with pytest.raises(ValueError, match="has 5 columns but dataset.expected_dim is 43"):
        load_table(path, expected_dim=43)


def test_table_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy not found"):
        load_table(tmp_path / "missing.npy")


def test_table_unknown_policy(tmp_path):
    with pytest.raises(ValueError, match="nonfinite must be one of drop, raise"):
        load_table(tmp_path / "t.npy", nonfinite="ignore")


def test_split_rows_seeded_and_disjoint():
    data = np.arange(100, dtype=np.float64)[:, None]
    train, val, test = split_rows(data, 0.1, 0.2, seed=4)
    again = split_rows(data, 0.1, 0.2, seed=4)

    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert np.array_equal(train, again[0])
    assert sorted(np.concatenate([train, val, test]).ravel().tolist()) == list(range(100))
    assert not np.array_equal(train, split_rows(data, 0.1, 0.2, seed=5)[0])


def test_standardizer_uses_training_statistics():
    train = np.array([[0.0, 1.0], [2.0, 3.0]])
    standardize = fit_standardizer(train)

    np.testing.assert_allclose(standardize(train), [[-1.0, -1.0], [1.0, 1.0]])
    np.testing.assert_allclose(standardize(np.array([[4.0, 5.0]])), [[3.0, 3.0]])


def test_standardizer_constant_training_column():
    train = np.array([[0.0, 1.0], [2.0, 1.0], [3.0, 1.0]])

    with pytest.raises(ValueError, match="columns 1 are constant on the 3 training rows"):
        fit_standardizer(train)
    with pytest.warns(UserWarning, match="dropped these columns"):
        standardize = fit_standardizer(train, constant="drop")
    assert standardize.columns.tolist() == [0]
