"""Loss curves of finished runs, as one table: a row per logged step or validation of every run.

Columns: run, run_hash, step, tokens, lr and train_loss (at logged steps, from `metrics.jsonl`),
val_loss (at the run's curve points, from `val_curve.jsonl`, and at its last step, the run record's
result). A step both logged and validated is one row.
"""

from __future__ import annotations

from pathlib import Path

from stages.metrics import METRICS, VAL_CURVE, read_metrics
from stages.record import RunRecord

COLUMNS = ("run", "run_hash", "step", "tokens", "lr", "train_loss", "val_loss")


def run_curve(run_dir: Path, record: RunRecord) -> list[dict]:
    """The loss curve of the finished run in `run_dir`, by step."""
    rows: dict[int, dict] = {}

    def row(step: int, tokens: int) -> dict:
        return rows.setdefault(step, {"run": record.name, "run_hash": record.run_hash, "step": step, "tokens": tokens,
                                      "lr": None, "train_loss": None, "val_loss": None})  # fmt: skip

    for logged in read_metrics(run_dir, METRICS):
        row(logged["step"], logged["tokens"]).update(lr=logged["lr"], train_loss=logged["loss"])
    for point in read_metrics(run_dir, VAL_CURVE):
        row(point["step"], point["tokens"])["val_loss"] = point["val_loss"]
    if record.steps:
        row(record.steps, record.tokens)["val_loss"] = record.val_loss
    return [rows[step] for step in sorted(rows)]


def store_curves(store: Path, records: list[RunRecord]) -> list[dict]:
    """The curves of a store's finished runs (`records`, from `stages.record.finished_records`), run after run."""
    return [row for record in records for row in run_curve(Path(store) / "train" / f"{record.name}-{record.run_hash}", record)]
