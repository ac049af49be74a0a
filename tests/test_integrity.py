"""Integrity of finished steps: `SUCCESS` records each file's size and checksum, reading a step checks
them, and a damaged step (a truncated run.json, a truncated law.json, a deleted tokens.bin) is named in
one line by `dcsl status`, `runs`, `fit STORE` and `sweep --explain`, and run again by `dcsl sweep`:
a run resumes from its final checkpoint, a tokenize or a fit is rebuilt."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from pipeline.cli import main
from pipeline.store import Decision, State, Step, Store
from scaling.errors import InputError
from stages.artifacts import DAMAGED, SUCCESS, damage, is_complete, mark_success
from stages.record import read_record

DCSL = str(Path(sys.executable).with_name("dcsl"))
ENV = dict(os.environ, HF_HOME=os.environ.get("HF_HOME") or tempfile.mkdtemp(prefix="dcsl-hf-"), HF_DATASETS_OFFLINE="1",
           HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")  # fmt: skip
ENV.pop("DCSL_INJECT_FAILURE", None)
SWEEP = {
    "name": "mini",
    "data": {
        "name": "mini",
        "corpus": {"source": "stdlib", "max_documents": 100},
        "tokenizer": {"vocab_size": 512, "training_characters": "200K"},
        "validation_tokens": "10K",
        "num_proc": 1,
    },
    "models": [{"name": "s", "layers": 1, "width": 32, "heads": 1}],
    "grid": [{"unique_tokens": ["20K"], "epochs": [1, 2, 4]}],  # three runs: a law with the c4 base (two free parameters)
    "train": {"seq_len": 64, "batch_tokens": 1024, "checkpoint_every": 10},
    "fit": {"base": "c4"},
    "wandb": {"mode": "disabled"},
}
FIT = ["--base-preset", "c4", "--fix", "rn_star=5.309743"]  # one free parameter: two whole runs are enough
RUN = "s-U20K-e2-s0"
MIB = 1 << 20


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dcsl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DCSL, *args], capture_output=True, text=True, env=ENV, timeout=600)


def _config(folder: Path, store: Path) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "store": str(store)}))
    return path


def _successes(store: Path) -> dict[str, int]:
    """The modification time of every step's SUCCESS, by step: a step that ran again has a new one."""
    return {str(p.parent.relative_to(store)): p.stat().st_mtime_ns for p in store.glob(f"*/*/{SUCCESS}")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One real store of a finished sweep (three runs, a law, a report), copied by each test before damaging it."""
    folder = tmp_path_factory.mktemp("built")
    result = _dcsl("sweep", str(_config(folder, folder / "store")))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "store"


@pytest.fixture
def store(built, tmp_path) -> Path:
    shutil.copytree(built, tmp_path / "store", symlinks=True)
    return tmp_path / "store"


def _one(store: Path, pattern: str) -> Path:
    (path,) = store.glob(pattern)
    return path


# -- what SUCCESS records and what reading checks ------------------------------------------------------


def test_success_records_every_files_size_and_sha256_and_only_the_edges_of_a_file_over_64_mib(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "run.json").write_bytes(b'{"val_loss": 5.1}')
    (tmp_path / "sub" / "tokens.npy").write_bytes(b"\x01\x02\x03")
    (tmp_path / "link").symlink_to("run.json")  # links are not followed: their target is checked as itself
    big = tmp_path / "tokens.bin"
    with open(big, "wb") as handle:
        handle.truncate(64 * MIB + 1)  # one byte over the limit: hashed by its first and last MiB only
    mark_success(tmp_path)
    assert json.loads((tmp_path / SUCCESS).read_text()) == {"format": 1, "files": {
        "run.json": {"bytes": 17, "sha256": _sha256(b'{"val_loss": 5.1}')},
        "sub/tokens.npy": {"bytes": 3, "sha256": _sha256(b"\x01\x02\x03")},
        "tokens.bin": {"bytes": 64 * MIB + 1, "edges_sha256": _sha256(bytes(2 * MIB))},
    }}  # fmt: skip
    assert damage(tmp_path) is None and is_complete(tmp_path)

    def changed(path: Path, offset: int, data: bytes) -> str | None:
        """What `damage` says with `data` written at `offset` of `path`; the file is restored afterwards."""
        original = path.read_bytes()
        with open(path, "r+b") as handle:
            handle.seek(offset)
            handle.write(data)
        try:
            return damage(tmp_path)
        finally:
            path.write_bytes(original)

    assert changed(big, 32 * MIB, b"\xff") is None  # inside a large file, a change that keeps its size is not seen
    assert changed(big, 64 * MIB, b"\xff") == "tokens.bin is not as written"  # its last byte is
    assert changed(big, 64 * MIB + 1, b"\xff") == "tokens.bin is not as written"  # and a byte more
    assert changed(tmp_path / "run.json", 14, b"9") == "run.json is not as written"  # a small file: any byte
    assert changed(tmp_path / "sub" / "tokens.npy", 3, b"\x04") == "sub/tokens.npy is not as written"  # extended
    (tmp_path / "added.txt").write_text("written after SUCCESS")
    assert damage(tmp_path) is None  # files added later are not checked
    (tmp_path / "run.json").write_bytes(b'{"val_loss": 5')
    assert damage(tmp_path) == "run.json is not as written" and not is_complete(tmp_path)
    (tmp_path / "run.json").unlink()
    assert damage(tmp_path) == "run.json is missing"
    (tmp_path / SUCCESS).write_text('{"format": 1, "fil')
    assert damage(tmp_path) == "SUCCESS is unreadable (JSONDecodeError)"
    (tmp_path / SUCCESS).unlink()
    assert damage(tmp_path) == "not finished (no SUCCESS)" and not is_complete(tmp_path)


def test_a_damaged_step_reads_damaged_and_its_claim_sets_success_aside_and_runs_it_again(tmp_path):
    store, step = Store(tmp_path), Step("train", "run1", {"lr": 1e-3})
    out = store.step_dir(step) / "out.txt"
    out.parent.mkdir(parents=True)
    seen: list[list[str]] = []  # what the step's folder held when its work started

    def work() -> None:
        seen.append(sorted(os.listdir(out.parent)))
        out.write_text("result\n")

    assert store.run(step, work) is State.DONE and store.state(step) is State.DONE
    written = (store.step_dir(step) / SUCCESS).read_text()
    out.write_text("res")
    assert store.state(step) is State.DAMAGED and not store.is_done(step)
    assert store.explain(step) == Decision(True, "damaged (out.txt is not as written): runs again", State.DAMAGED)
    [info] = store.list_steps()
    assert (info.state, info.detail) == (State.DAMAGED, "out.txt is not as written")
    with store.claim(step) as lease:  # not None: the damaged SUCCESS is not taken for "finished meanwhile"
        assert lease is not None
        work()
    assert seen == [[], [DAMAGED, "out.txt"]]  # the rerun's work found SUCCESS moved aside
    assert (store.step_dir(step) / DAMAGED).read_text() == written and store.record(step)["attempt"] == 2
    assert store.state(step) is State.DONE and out.read_text() == "result\n"


# -- a real store, damaged three ways --------------------------------------------------------------------


def _status(store: Path, capsys) -> tuple[dict[str, dict[str, int]], list[str]]:
    """`dcsl status`: the table's counts by stage and state, and the lines after the table (the corpora's
    contamination lines, which tests/test_data_clean_split.py checks, left out)."""
    assert main(["status", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [cell.strip() for cell in lines[1].split("┃")[2:-1]]
    rows = {cells[1].strip(): cells[2:-1] for line in lines if line.startswith("│") and (cells := line.split("│"))}
    counts = {stage: {state: int(n) for state, n in zip(header, cells)} for stage, cells in rows.items()}
    end = next(index for index, line in enumerate(lines) if line.startswith("└"))
    return counts, [line for line in lines[end + 1 :] if "validation contamination" not in line]


def _runs(store: Path, capsys) -> tuple[list[str], list[str]]:
    """`dcsl runs`: the names of the runs in its table and its stderr lines."""
    assert main(["runs", str(store)]) == 0
    captured = capsys.readouterr()
    return [row["name"] for row in csv.DictReader(io.StringIO(captured.out))], captured.err.splitlines()


def _fit(store: Path, capsys) -> tuple[int, list[str]]:
    """`dcsl fit STORE`: the number of runs fitted and the warnings that name damaged runs."""
    assert main(["fit", str(store), *FIT, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)["n_runs"], [line for line in captured.err.splitlines() if "damaged" in line]


def _rerun_record(store: Path, built: Path) -> None:
    """The run resumed at its final step: it only evaluated and wrote its record again, to the same numbers."""
    record, original = read_record(_one(store, f"train/{RUN}-*")), read_record(_one(built, f"train/{RUN}-*"))
    assert record.resumed_at == [original.steps] == [39]
    assert abs(record.val_loss - original.val_loss) < 1e-6
    measured_again = {"resumed_at", "wall_seconds", "val_loss"}
    assert record.model_dump(exclude=measured_again) == original.model_dump(exclude=measured_again)


def _same_bytes(pattern: str) -> Callable[[Path, Path], None]:
    def check(store: Path, built: Path) -> None:
        assert _one(store, pattern).read_bytes() == _one(built, pattern).read_bytes()

    return check


class Damage(NamedTuple):
    """One way a finished step breaks: the file (a glob in the store), what is done to it, what `damage` says."""

    pattern: str
    harm: Callable[[Path], None]
    detail: str
    rebuilt: Callable[[Path, Path], None]
    """Checks the step's output after the sweep ran it again, against the undamaged store."""


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


DAMAGES = {
    "run.json": Damage(f"train/{RUN}-*/run.json", _truncate, "run.json is not as written", _rerun_record),
    "law.json": Damage("fit/mini-*/law.json", _truncate, "law.json is not as written", _same_bytes("fit/mini-*/law.json")),
    "tokens.bin": Damage("tokenize/mini-*/tokens.bin", Path.unlink, "tokens.bin is missing",
                         _same_bytes("tokenize/mini-*/tokens.bin")),
}  # fmt: skip


@pytest.mark.parametrize("name", DAMAGES)
def test_a_damaged_step_is_named_in_one_line_by_every_command_and_a_sweep_runs_it_again(store, built, tmp_path, capsys, name):
    case = DAMAGES[name]
    harmed = _one(store, case.pattern)
    step_dir = harmed.parent
    stage, step_id = step_dir.parent.name, f"{step_dir.parent.name}/{step_dir.name}"
    label = f"{stage}/{step_dir.name.rsplit('-', 1)[0]}"
    case.harm(harmed)
    before = _successes(store)

    counts, lines = _status(store, capsys)
    expected = {"fit": 1, "report": 1, "tokenize": 1, "train": 3}
    assert {s: (c["done"], c["damaged"]) for s, c in counts.items()} == {
        s: (n - (s == stage), int(s == stage)) for s, n in expected.items()}  # fmt: skip
    law = [] if stage == "fit" else [f"latest law: {_one(store, 'fit/mini-*/law.json')}"]  # never a damaged one
    assert lines == [f"damaged      {step_id}: {case.detail}", *law]

    warnings = [f"warning: left out damaged run {step_id}: {case.detail}"] if stage == "train" else []
    names, err = _runs(store, capsys)
    assert err == warnings and names == [f"s-U20K-e{e}-s0" for e in (1, 2, 4) if stage != "train" or e != 2]
    assert _fit(store, capsys) == (len(names), warnings)

    config = _config(tmp_path, store)
    explained = _dcsl("sweep", str(config), "--explain")
    assert explained.returncode == 0 and explained.stderr == ""
    ran = [line for line in explained.stdout.splitlines() if line.startswith("run ")]
    assert ran == [f"run   {label}: damaged ({case.detail}): runs again"]
    later = "; then the fit and the report over the runs that succeed" if stage == "train" else ""
    assert explained.stdout.splitlines()[-1] == f"1 of {4 if later else 6} steps will run{later}"

    swept = _dcsl("sweep", str(config))
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert swept.stdout.splitlines()[0] == "3 of 3 runs succeeded"
    case.rebuilt(store, built)
    after = _successes(store)
    assert {k: v for k, v in after.items() if k != step_id} == {k: v for k, v in before.items() if k != step_id}
    assert after[step_id] != before[step_id]  # only the damaged step ran again
    assert [(i.stage, i.state) for i in Store(store).list_steps() if i.state is not State.DONE] == []
    assert json.loads((step_dir.parent / ".steps" / step_dir.name / "step.json").read_text())["attempt"] == 2
    assert (step_dir / DAMAGED).is_file() == (stage == "train")  # a rebuilt step replaced its whole folder


def test_a_store_written_before_the_checksums_reads_as_finished_and_an_unreadable_record_is_left_out(store, tmp_path, capsys):
    for success in store.glob(f"*/*/{SUCCESS}"):
        success.write_text("")  # what earlier code wrote: nothing to verify
    counts, _ = _status(store, capsys)
    assert {s: c["done"] for s, c in counts.items()} == {"fit": 1, "report": 1, "tokenize": 1, "train": 3}
    explained = _dcsl("sweep", str(_config(tmp_path, store)), "--explain")
    assert explained.stdout.splitlines()[-1] == "0 of 6 steps will run"  # every step found, with its old hash
    record = _one(store, f"train/{RUN}-*/run.json")
    _truncate(record)
    counts, _ = _status(store, capsys)
    assert counts["train"]["done"] == 3  # nothing recorded, nothing to find wrong
    with pytest.raises(InputError) as raised:  # asked for directly, the record is one line of error
        read_record(record.parent)
    assert str(raised.value).startswith(f"run record: {str(record)!r} is damaged or not a run record ((file): ")
    names, err = _runs(store, capsys)
    assert names == ["s-U20K-e1-s0", "s-U20K-e4-s0"]
    assert err == [f"warning: left out damaged run train/{record.parent.name}: {raised.value.problem}"]
