"""Reading run tables from files: CSV (stdlib, in `scaling.runs`) and Parquet (pyarrow)."""

from __future__ import annotations

from pathlib import Path

from scaling.errors import InputError
from scaling.runs import RunTable, read_csv_runs

PARQUET_SUFFIXES = (".parquet", ".pq")


def read_parquet_runs(path: str | Path, *, loss_column: str | None = None) -> RunTable:
    """Load a run table from Parquet; rows are named by their 1-based position."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError("runs file", f"{str(path)!r} does not exist")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise InputError("runs file", f"{path} is not a readable Parquet file ({err})") from None
    return RunTable.from_columns(table.to_pydict(), source=str(path), loss_column=loss_column)


def read_runs(path: str | Path, *, loss_column: str | None = None) -> RunTable:
    """Load a run table from a .csv or .parquet file."""
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return read_parquet_runs(path, loss_column=loss_column)
    if path.suffix.lower() == ".csv":
        return read_csv_runs(path, loss_column=loss_column)
    raise InputError("runs file", f"{str(path)!r} has suffix {path.suffix!r}; use .csv or .parquet")
