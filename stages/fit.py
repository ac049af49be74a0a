"""The fit stage: the run records of a sweep -> a fitted law (`law.json`) and the run table (`runs.csv`).

N is the non-embedding parameter count by default (`params_kind="total"` for all parameters), D the
tokens trained on, U the unique-token budget and the loss the validation loss on the fixed split.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from scaling.atomic import write_text_atomic
from scaling.errors import InputError
from scaling.fit import FitSpec
from scaling.lawfile import dumps, fit_law_document, fit_pool_law_document
from scaling.pool_fit import PoolFitSpec
from scaling.runs import RunTable
from stages.record import POOL_FIELDS, RunRecord

LAW = "law.json"
RUNS = "runs.csv"


def run_table(records: list[RunRecord], params_kind: str = "non_embedding") -> RunTable:
    """The fit's table of runs (params, tokens, unique_tokens, val_loss), one row per run record; runs over
    several pools have `tokens.<pool>` and `unique_tokens.<pool>` instead of unique_tokens.

    A run that trains on fewer tokens than its budget (one epoch rounded down to whole steps) saw
    only D unique tokens, so its U is min(U, D).
    """
    if not records:
        raise InputError("runs", "no finished runs to fit")
    ordered = sorted(records, key=lambda record: record.name)
    columns = {
        "run": [record.name for record in ordered],
        "params": [record.params_for(params_kind) for record in ordered],
        "tokens": [record.tokens for record in ordered],
        "unique_tokens": [min(record.unique_tokens, record.tokens) for record in ordered],
        "val_loss": [record.val_loss for record in ordered],
    }
    if ordered[0].pools:  # several pools: D_i and U_i per pool (`scaling.runs`), U from them
        del columns["unique_tokens"]
        for index, pool in enumerate(ordered[0].pools):
            columns[f"tokens.{pool.name}"] = [record.pools[index].tokens for record in ordered]
            columns[f"unique_tokens.{pool.name}"] = [record.pools[index].unique_tokens for record in ordered]
    return RunTable.from_columns(columns, source="run records", row_label="run", row_numbers=range(1, len(ordered) + 1))


def runs_csv(records: list[RunRecord]) -> str:
    """The run records as CSV text with the columns `dcsl fit` reads first (nested fields left out); a multi-pool
    run adds per pool `tokens.<pool>`, `unique_tokens.<pool>`, `epochs.<pool>` and `val_loss.<pool>`."""
    flat = [{**{key: value for key, value in record.model_dump(mode="json", exclude=POOL_FIELDS if record.pools is None else None).items()
                if not isinstance(value, (dict, list))}, **pool_columns(record)}
            for record in records]  # fmt: skip
    names = list(dict.fromkeys(["name", "params", "params_non_embedding", "tokens", "unique_tokens", "epochs", "val_loss",
                                *(key for record in flat for key in record)]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(flat, key=lambda record: record["name"]))
    return buffer.getvalue()


def pool_columns(record: RunRecord) -> dict:
    """A multi-pool run's per-pool columns, pool by pool in the corpus's order (none for a one-pool run)."""
    columns = {}
    for pool in record.pools or []:
        columns.update({f"{field}.{pool.name}": getattr(pool, field) for field in ("tokens", "unique_tokens", "epochs", "val_loss")})
    return columns


def check_law_fits(records: list[RunRecord], spec: FitSpec | PoolFitSpec) -> None:
    """InputError unless the runs suit the law: all on one corpus for a one-pool law, all over the same pools for a pool law."""
    pools = {tuple(pool.name for pool in record.pools or []) for record in records}
    if not pools:
        return
    if len(pools) > 1:
        raise InputError("runs", f"the runs draw from different pools ({' / '.join(sorted(', '.join(p) or 'one corpus' for p in pools))})")
    pooled = bool(pools.pop())
    if pooled and not isinstance(spec, PoolFitSpec):
        raise InputError("fit.law", f"{spec.law!r} fits runs on one corpus; these runs draw from several pools: use multi-pool or qqt")
    if not pooled and isinstance(spec, PoolFitSpec):
        raise InputError("fit.law", f"{spec.law!r} is a law of several pools; these runs draw from one corpus")


def fit_runs(records: list[RunRecord], spec: FitSpec | PoolFitSpec, out_dir: Path, *, params_kind: str = "non_embedding",
             resamples: int = 0, seed: int = 0) -> dict:
    """Fit the law to the runs, write `law.json` and `runs.csv` into `out_dir`, return the law document."""
    check_law_fits(records, spec)
    fit = fit_pool_law_document if isinstance(spec, PoolFitSpec) else fit_law_document
    _, document = fit(run_table(records, params_kind), spec, resamples=resamples, seed=seed)
    document["params_kind"] = params_kind
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / RUNS, runs_csv(records))
    write_text_atomic(out_dir / LAW, dumps(document))
    return document
