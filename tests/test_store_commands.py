"""`dcsl runs` and `dcsl status` read a store without Ray: CSV and Parquet run tables, damaged records."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from stages.artifacts import mark_success
from stages.record import RunRecord


def _store(root: Path, count: int = 3) -> list[RunRecord]:
    """A store holding `count` finished runs (and one unfinished one, which no table lists)."""
    records = []
    for i in range(count + 1):
        record = RunRecord(name=f"m-U{10 * (i + 1)}K-e1-s0", params=1000 * (i + 1), params_non_embedding=800 * (i + 1),
                           tokens=10_000 * (i + 1), unique_tokens=10_000 * (i + 1), epochs=1.0, val_loss=4.0 - 0.1 * i,
                           flops=6 * 800 * (i + 1) * 10_000 * (i + 1), resumed_at=[5])  # fmt: skip
        folder = root / "train" / f"{record.name}-{i:016x}"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(record.to_json())
        if i < count:
            mark_success(folder)
            records.append(record)
    return records


def test_runs_writes_the_same_table_as_csv_and_parquet(tmp_path, capsys):
    records = _store(tmp_path / "store")
    assert main(["runs", str(tmp_path / "store")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["name"] for row in rows] == [r.name for r in records]
    assert list(rows[0])[:7] == ["name", "params", "params_non_embedding", "tokens", "unique_tokens", "epochs", "val_loss"]
    assert main(["runs", str(tmp_path / "store"), "--parquet", "--out", str(tmp_path / "runs.parquet")]) == 0
    table = pq.read_table(tmp_path / "runs.parquet").to_pydict()
    assert table["name"] == [r.name for r in records] and table["params"] == [r.params for r in records]
    assert table["val_loss"] == pytest.approx([r.val_loss for r in records])
    assert "resumed_at" not in table  # lists are left out of the flat table
    assert not list(tmp_path.glob(".runs.parquet*"))  # written under a temporary name, renamed into place


@pytest.mark.parametrize("argv, line", [
    (["--parquet"], "error: --parquet: needs --out FILE (Parquet is binary)"),
    (["--csv", "--parquet", "--out", "x"], "error: --csv and --parquet: give one of them"),
])  # fmt: skip
def test_runs_flags_that_do_not_go_together_are_one_line(tmp_path, capsys, argv, line):
    _store(tmp_path / "store")
    assert main(["runs", str(tmp_path / "store"), *argv]) == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_damaged_run_record_is_left_out_with_one_warning_line_not_a_traceback(tmp_path, capsys):
    records = _store(tmp_path / "store")
    (damaged,) = (tmp_path / "store" / "train").glob("m-U20K-e1-s0-*/run.json")
    damaged.write_text(damaged.read_text()[:40])
    assert main(["runs", str(tmp_path / "store")]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"warning: left out damaged run train/{damaged.parent.name}: run.json is not as written"]
    assert [row["name"] for row in csv.DictReader(io.StringIO(captured.out))] == [records[0].name, records[2].name]
