"""The store when it can't be written, or finds a claim it never wrote: a sweep on a store that is a
file fails at once with the OS error, a write that fails (a real EFBIG from a file-size limit, an
ENOTDIR) raises or ends the step FAILED instead of waiting forever, a garbage lease is taken over at
once, and an interrupted sweep marks INTERRUPTED the steps whose holder is gone."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import pipeline.store
from pipeline.store import State, Step, Store

SPAWN = multiprocessing.get_context("spawn")
DCSL = str(Path(sys.executable).with_name("dcsl"))
TINY_CI = Path(__file__).parents[1] / "configs" / "tiny_ci.yaml"
STEP = Step("train", "run0", {"lr": 1e-3})


def _blocked_records(store: Store, step: Step) -> Path:
    """Put a regular file where the step's records directory goes: creating anything in it fails (ENOTDIR)."""
    records = store.records_dir(step)
    records.parent.mkdir(parents=True, exist_ok=True)
    records.write_text("not a directory\n")
    return records


# -- a sweep checks its store before any work -------------------------------------------------------------


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_sweep_on_a_store_it_cannot_write_fails_at_once_naming_the_path_and_the_os_error(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a store\n")
    store, error = {"a file": (blocker, "[Errno 17] File exists"),
                    "under a file": (blocker / "store", "[Errno 20] Not a directory")}[where]  # fmt: skip
    result = subprocess.run([DCSL, "sweep", str(TINY_CI), "--store", str(store)], capture_output=True, text=True,
                            env=dict(os.environ, RAY_AUTH_MODE="disabled"), timeout=300)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: store: {store} is not a folder this process can write to ({error}: ")
    assert sorted(tmp_path.iterdir()) == [blocker] and blocker.read_text() == "not a store\n"  # nothing written


def test_check_writable_creates_the_root_and_leaves_no_probe(tmp_path):
    store = Store(tmp_path / "new" / "store")
    store.check_writable()
    assert store.root.is_dir() and list(store.root.iterdir()) == []
    with pytest.raises(NotADirectoryError):
        Store(_blocked_records(store, STEP) / "store").check_writable()


# -- a write that fails while claiming or recording a step ---------------------------------------------------


def test_a_claim_whose_records_cannot_be_written_raises_instead_of_waiting(tmp_path):
    store = Store(tmp_path, lease_timeout=60.0)
    _blocked_records(store, STEP)
    ran = []
    with pytest.raises(NotADirectoryError), store.claim(STEP):
        ran.append("claimed")  # before: the claim yielded None, as if another process held the step
    with pytest.raises(NotADirectoryError):
        store.run(STEP, lambda: ran.append("worked"), wait=False)  # before: RUNNING, and `wait=True` polled forever
    assert ran == [] and store.state(STEP) is State.NEW


def _run_under_a_file_size_limit(root: str, limit: int, output_bytes: int, results) -> None:
    """`Store.run(STEP)` in a process whose files can't grow past `limit` bytes: writes past it fail with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # applies to root as well: a disk that is full
    store = Store(root)

    def work() -> None:
        store.step_dir(STEP).mkdir(parents=True)
        (store.step_dir(STEP) / "checkpoint.pt").write_bytes(b"\0" * output_bytes)

    try:
        results.put(("returned", store.run(STEP, work, poll=0.05).value))
    except OSError as error:
        results.put(("raised", error.errno))


def _outcome_under_a_file_size_limit(root: Path, limit: int, output_bytes: int) -> tuple[str, object]:
    results = SPAWN.Queue()
    process = SPAWN.Process(target=_run_under_a_file_size_limit, args=(str(root), limit, output_bytes, results))
    process.start()
    try:
        return results.get(timeout=60)  # before: the lease that could not be written read as held; it never answered
    finally:
        process.kill()
        process.join()


def test_a_lease_that_cannot_be_written_raises_its_os_error_and_leaves_no_temporary_file(tmp_path):
    assert _outcome_under_a_file_size_limit(tmp_path, 64, 0) == ("raised", errno.EFBIG)  # the claim's JSON is longer
    store = Store(tmp_path)
    assert os.listdir(store.records_dir(STEP) / "leases") == [] and store.state(STEP) is State.NEW


def test_a_disk_that_fills_during_the_work_ends_the_step_failed_with_that_cause(tmp_path):
    assert _outcome_under_a_file_size_limit(tmp_path, 16_384, 65_536) == ("returned", State.FAILED.value)
    store = Store(tmp_path)
    failure = store.failure(STEP)
    assert failure["error_type"] == "OSError" and failure["message"].startswith(f"[Errno {errno.EFBIG}] File too large")
    assert store.state(STEP) is State.FAILED and store.holder(STEP) is None  # recorded, and the lease released


# -- a lease file this code never wrote ---------------------------------------------------------------------


def _refuse_to_poll(seconds: float) -> None:
    raise AssertionError(f"Store.run polled ({seconds} s): it waited for a claim that holds nothing")


GARBAGE = ["", "{trunc", "[1, 2]", '{"owner": 7, "host": "h", "pid": 1}', '{"owner": "o", "host": "h", "pid": "x"}']


@pytest.mark.parametrize("garbage", GARBAGE)
def test_a_garbage_lease_is_stale_at_once_and_taken_over_without_waiting(tmp_path, monkeypatch, garbage):
    store = Store(tmp_path, lease_timeout=3600.0)  # its heartbeat is fresh: only its content can make it stale
    leases = store.records_dir(STEP) / "leases"
    leases.mkdir(parents=True)
    (leases / "lease.0").write_text(garbage)
    assert store.state(STEP) is State.INTERRUPTED  # before: RUNNING for an hour (or a ValueError on a bad pid)
    assert store.explain(STEP).run is True
    monkeypatch.setattr(pipeline.store, "time", SimpleNamespace(time=time.time, sleep=_refuse_to_poll))
    ran = []
    assert store.run(STEP, lambda: ran.append("worked"), poll=3600.0) is State.DONE
    assert ran == ["worked"] and store.record(STEP)["attempt"] == 1
    assert sorted(os.listdir(leases)) == ["lease.0", "lease.1", "released.1"]  # claim 1 followed the garbage claim 0


# -- an interrupted sweep's steps whose holder is gone ---------------------------------------------------------


def _claim_and_hold(root: str, step: Step, started: str) -> None:
    """Claim the step, say so in `started`, and hold it until killed."""
    with Store(root).claim(step) as lease:
        assert lease is not None
        Path(started).write_text("")
        time.sleep(600)


def test_interrupt_abandoned_marks_only_a_step_whose_holder_is_gone(tmp_path):
    store = Store(tmp_path / "store")
    gone, held, done = (Step("train", name, {"lr": 1e-3}) for name in ("gone", "held", "done"))
    holder = SPAWN.Process(target=_claim_and_hold, args=(str(store.root), gone, str(tmp_path / "started")))
    holder.start()
    while not (tmp_path / "started").exists():
        assert holder.is_alive()
        time.sleep(0.01)
    holder.kill()  # SIGKILL: it writes no marker and never releases its lease
    holder.join()
    assert store.interrupt_abandoned(gone, "the sweep was interrupted") is True
    marker = json.loads((store.records_dir(gone) / "INTERRUPTED").read_text())
    assert marker["reason"] == "the sweep was interrupted" and store.holder(gone) is None  # marked, and the lease released
    assert store.state(gone) is State.INTERRUPTED and store.interrupt_abandoned(gone, "again") is False
    assert store.run(done, lambda: None) is State.DONE and store.interrupt_abandoned(done, "done") is False
    with store.claim(held) as lease:  # this process, alive: its lease stays
        assert lease is not None and store.interrupt_abandoned(held, "held") is False
        assert store.state(held) is State.RUNNING
