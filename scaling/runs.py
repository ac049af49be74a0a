"""Run tables: one row per training run (N params, D tokens, U unique tokens, final loss), validated.

A multi-pool table names its pools by columns `tokens.<pool>` and `unique_tokens.<pool>` (the first
pool listed is the reference); D is then the sum over pools unless a `tokens` column is given, and
U is the sum of min(U_i, D_i).

`RunTable.from_columns` validates columns from any reader (CSV here with the stdlib, Parquet in
`pipeline.tables`); every problem is reported with the row's position in the source.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scaling.errors import InputError
from scaling.pool_laws import check_pool_names

REQUIRED_COLUMNS = ("params", "tokens")
LOSS_COLUMNS = ("val_loss", "loss")
POOL_COLUMNS = ("tokens", "unique_tokens")  # per-pool columns are `<these>.<pool>`


@dataclass(frozen=True)
class RunTable:
    """Validated runs: positive finite arrays with unique_tokens <= tokens; `warnings` lists kept oddities."""

    params: np.ndarray
    tokens: np.ndarray
    unique_tokens: np.ndarray
    loss: np.ndarray
    names: tuple[str, ...]
    source: str = "<memory>"
    warnings: tuple[str, ...] = field(default=())
    pools: tuple[str, ...] = ()  # pool names of a multi-pool table, reference first
    pool_tokens: np.ndarray | None = None  # (n, P) D_i
    pool_unique: np.ndarray | None = None  # (n, P) U_i

    def pool_columns(self, mask: np.ndarray) -> dict:
        """The pool fields of the runs where `mask` is true, for building a sub-table."""
        if not self.pools:
            return {}
        return {"pools": self.pools, "pool_tokens": self.pool_tokens[mask], "pool_unique": self.pool_unique[mask]}

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def epochs(self) -> np.ndarray:
        """D / U: how often each run saw its unique tokens."""
        return self.tokens / self.unique_tokens

    @property
    def flops(self) -> np.ndarray:
        """Training compute C = 6 N D of each run."""
        return 6.0 * self.params * self.tokens

    def subset(self, mask: np.ndarray) -> "RunTable":
        """The runs where `mask` is true (same source and names)."""
        mask = np.asarray(mask, dtype=bool)
        return RunTable(
            self.params[mask], self.tokens[mask], self.unique_tokens[mask], self.loss[mask],
            tuple(n for n, keep in zip(self.names, mask) if keep), self.source, **self.pool_columns(mask),
        )

    def sha256(self) -> str:
        """A hash of the table's numbers (order-sensitive), to tie a fitted law to its input."""
        digest = hashlib.sha256()
        for column in (self.params, self.tokens, self.unique_tokens, self.loss):
            digest.update(np.ascontiguousarray(column, dtype="<f8").tobytes())
        if self.pools:  # a one-pool table hashes as it always did
            digest.update(",".join(self.pools).encode())
            for column in (self.pool_tokens, self.pool_unique):
                digest.update(np.ascontiguousarray(column, dtype="<f8").tobytes())
        return digest.hexdigest()

    def to_columns(self) -> dict[str, list]:
        """Plain columns (run, params, tokens, unique_tokens, per-pool columns, loss) for writing out."""
        columns = {"run": list(self.names), "params": self.params.tolist(), "tokens": self.tokens.tolist(),
                   "unique_tokens": self.unique_tokens.tolist()}
        for j, pool in enumerate(self.pools):
            columns[f"tokens.{pool}"] = self.pool_tokens[:, j].tolist()
            columns[f"unique_tokens.{pool}"] = self.pool_unique[:, j].tolist()
        return {**columns, "loss": self.loss.tolist()}

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, Sequence],
        *,
        source: str = "<memory>",
        loss_column: str | None = None,
        row_label: str = "row",
        row_numbers: Sequence[int] | None = None,
    ) -> "RunTable":
        """Validate raw columns into a table; InputError naming the row (`row_label` + its number) otherwise."""
        available = list(columns)
        pools = _pool_names(available, source)
        for name in REQUIRED_COLUMNS:
            if name not in columns and not (pools and name == "tokens"):
                raise InputError(source, f"missing column {name!r} (columns: {', '.join(available)})")
        loss_name = _pick_loss_column(columns, loss_column, source)
        n_rows = len(columns["params"])
        if n_rows == 0:
            raise InputError(source, "no runs (the table is empty)")

        numbers = list(row_numbers) if row_numbers is not None else list(range(1, n_rows + 1))

        def where(i: int) -> str:
            return f"{source} {row_label} {numbers[i]}"

        numeric = {
            "params": _column(columns["params"], "params", where),
            "loss": _column(columns[loss_name], loss_name, where),
        }
        if pools:
            return cls._with_pools(columns, numeric, pools, source, where, numbers, row_label)
        numeric["tokens"] = _column(columns["tokens"], "tokens", where)
        if "unique_tokens" in columns:
            numeric["unique_tokens"] = _column(columns["unique_tokens"], "unique_tokens", where)
        else:
            numeric["unique_tokens"] = numeric["tokens"].copy()
        over = np.flatnonzero(numeric["unique_tokens"] > numeric["tokens"])
        if over.size:
            i = int(over[0])
            raise InputError(
                where(i), f"unique_tokens = {numeric['unique_tokens'][i]:g} exceeds tokens = "
                f"{numeric['tokens'][i]:g}; a run cannot see more unique tokens than it trains on"
            )
        return cls(
            numeric["params"], numeric["tokens"], numeric["unique_tokens"], numeric["loss"],
            _run_names(columns, numbers, row_label), source, tuple(_duplicate_warnings(numeric, where)),
        )

    @classmethod
    def _with_pools(cls, columns, numeric, pools, source, where, numbers, row_label) -> "RunTable":
        """A multi-pool table: D_i >= 0 drawn, U_i > 0 unique per pool (U_i = D_i when absent), some D_i > 0."""
        drawn = np.column_stack([_column(columns[f"tokens.{p}"], f"tokens.{p}", where, allow_zero=True)
                                 for p in pools])
        unique = np.column_stack([
            _column(columns[f"unique_tokens.{p}"], f"unique_tokens.{p}", where)
            if f"unique_tokens.{p}" in columns else drawn[:, j] for j, p in enumerate(pools)])
        empty = np.flatnonzero(drawn.sum(axis=1) <= 0)
        if empty.size:
            raise InputError(where(int(empty[0])), f"tokens.{pools[0]} ... tokens.{pools[-1]} are all 0; "
                                                   f"a run draws tokens from at least one pool")
        total = drawn.sum(axis=1)
        if "tokens" in columns:
            given = _column(columns["tokens"], "tokens", where)
            off = np.flatnonzero(np.abs(given - total) > 1e-6 * total)
            if off.size:
                i = int(off[0])
                raise InputError(where(i), f"tokens = {given[i]:g} is not the sum of the pools' tokens ({total[i]:g})")
        numeric["tokens"] = total
        numeric["unique_tokens"] = np.minimum(unique, drawn).sum(axis=1)
        return cls(
            numeric["params"], numeric["tokens"], numeric["unique_tokens"], numeric["loss"],
            _run_names(columns, numbers, row_label), source, tuple(_duplicate_warnings(numeric, where)),
            pools, drawn, unique,
        )


def _run_names(columns: Mapping[str, Sequence], numbers: Sequence[int], row_label: str) -> tuple[str, ...]:
    if "run" in columns:
        return tuple(str(v) for v in columns["run"])
    return tuple(f"{row_label}{number}" for number in numbers)


def _pool_names(available: Sequence[str], source: str) -> tuple[str, ...]:
    """Pool names from `tokens.<pool>` columns in column order; InputError for a malformed or orphan pool column."""
    pools = []
    for name in available:
        kind, dot, pool = name.partition(".")
        if not dot or kind not in POOL_COLUMNS:
            continue
        check_pool_names([pool], f"{source} column {name!r}")
        if kind == "tokens":
            pools.append(pool)
    for name in available:
        kind, _, pool = name.partition(".")
        if kind == "unique_tokens" and pool and pool not in pools:
            raise InputError(f"{source} column {name!r}", f"pool {pool!r} has no tokens.{pool} column "
                                                          f"(pools: {', '.join(pools) or 'none'})")
    return tuple(pools)


def _pick_loss_column(columns: Mapping[str, Sequence], requested: str | None, source: str) -> str:
    if requested is not None:
        if requested not in columns:
            raise InputError(source, f"missing loss column {requested!r} (columns: {', '.join(columns)})")
        return requested
    for name in LOSS_COLUMNS:
        if name in columns:
            return name
    raise InputError(
        source, f"missing loss column: expected 'val_loss' or 'loss' (or name one with --loss-column); "
        f"columns: {', '.join(columns)}"
    )


def _column(values: Sequence, name: str, where, allow_zero: bool = False) -> np.ndarray:
    out = np.empty(len(values), dtype=float)
    for i, raw in enumerate(values):
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise InputError(where(i), f"{name} = {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise InputError(where(i), f"{name} = {raw!r} is not finite")
        if value < 0 or (value == 0 and not allow_zero):
            raise InputError(where(i), f"{name} = {raw!r} must be {'>= 0' if allow_zero else '> 0'}")
        out[i] = value
    return out


def _duplicate_warnings(numeric: dict[str, np.ndarray], where) -> list[str]:
    rows = np.column_stack([numeric[k] for k in ("params", "tokens", "unique_tokens", "loss")])
    first_seen: dict[bytes, int] = {}
    warnings = []
    for i, row in enumerate(rows):
        key = row.tobytes()
        if key in first_seen:
            warnings.append(f"{where(i)} duplicates {where(first_seen[key])} exactly (kept)")
        else:
            first_seen[key] = i
    return warnings


def read_csv_runs(path: str | Path, *, loss_column: str | None = None) -> RunTable:
    """Load a run table from CSV (header row; numbers as plain floats); rows are named by file line."""
    path = Path(path)
    if not path.is_file():
        raise InputError("runs file", f"{str(path)!r} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise InputError(str(path), "empty file (expected a header row with params, tokens, ...)")
            header = [h.strip() for h in header]
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise InputError(str(path), f"column {repeated[0]!r} appears more than once in the header")
            numbered = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as err:
        raise InputError("runs file", f"{str(path)!r} is not UTF-8 text (byte offset {err.start}); is it a CSV file?") from None
    except csv.Error as err:
        raise InputError("runs file", f"{str(path)!r} is not a CSV table: {err}") from None
    for line, row in numbered:
        if len(row) != len(header):
            raise InputError(f"{path} line {line}", f"{len(row)} fields, the header has {len(header)}")
    columns = {name: [row[j].strip() for _, row in numbered] for j, name in enumerate(header)}
    return RunTable.from_columns(
        columns, source=str(path), loss_column=loss_column, row_label="line",
        row_numbers=[line for line, _ in numbered],
    )
