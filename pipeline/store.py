"""The content-addressed store as the pipeline sees it: where steps live, their states, and running them.

A step (`pipeline.step.Step`) lives at `<stage>/<name>-<hash>` in the store. Layout:

    <store>/<stage>/<name>-<hash>/          the output, written by the stage; `SUCCESS` last
    <store>/<stage>/.steps/<name>-<hash>/   the store's records of the step:
        step.json       resolved config, inputs, code version, attempt, who started it and when
        FAILED          JSON: error type, message, traceback, owner, host, pid, time
        DEP_FAILED      JSON: which input failed
        INTERRUPTED     JSON: why the run stopped (Ctrl-C, SystemExit, ...); it resumes on rerun
        leases/         the claims on the step (`pipeline.lease`)
    <store>/.stop/<id>                      an interrupted sweep's request that its steps stop (`pipeline.stop_request`)

The records live beside the output, not in it, because stages that build their output atomically
(`stages.artifacts.atomic_directory`) replace the output directory wholesale. `SUCCESS` is written
by `stages.artifacts.mark_success` alone, whether the store or a stage finishes the step.

States, first match wins: DONE (`SUCCESS` exists, whoever wrote it, the store or a stage, and the
output is as it records: `stages.artifacts.damage`); DAMAGED (`SUCCESS` exists but a file is missing
or not as written: claiming the step moves that `SUCCESS` aside, to `SUCCESS.damaged`, and runs it
again: a train run resumes from its last checkpoint, an atomic output is rebuilt); RUNNING (a live
lease); FAILED; DEP_FAILED; INTERRUPTED (a marker, a stale lease, or partial output without a lease:
a process was preempted or killed, the rerun resumes from its checkpoints); NEW.

Use, inside whatever process does the work (a Ray task, a plain loop):

    state = store.run(step, lambda: train(config, data_path, store.root))   # DONE / FAILED / ...

or, spelled out, `with store.claim(step) as lease:` and work only when `lease` is not None. Another
process's claim is waited for; a store that can't be written raises its OSError (`check_writable`
finds that out before any work).
`store.explain(step)` says whether a sweep runs a step, and why (`pipeline.explain`).

The step types (`Step`, `State`, `StepInfo`, `Decision`) and `LeaseInfo` are re-exported here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from pipeline.explain import decide
from pipeline.lease import Lease, LeaseInfo, acquire, current_lease, mark_released
from pipeline.step import Decision, State, Step, StepInfo, split_dirname
from scaling import dcsl_version
from scaling.atomic import write_text_atomic
from stages.artifacts import SUCCESS, artifact_dir, damage, is_complete, mark_success, set_aside

__all__ = [
    "DEFAULT_LEASE_TIMEOUT", "DEP_FAILED", "FAILED", "INTERRUPTED", "LEASES", "RECORDS", "STEP_JSON",
    "Decision", "Lease", "LeaseInfo", "State", "Step", "StepInfo", "Store", "code_version",
]  # fmt: skip

RECORDS = ".steps"
STEP_JSON = "step.json"
FAILED = "FAILED"
DEP_FAILED = "DEP_FAILED"
INTERRUPTED = "INTERRUPTED"
LEASES = "leases"
DEFAULT_LEASE_TIMEOUT = 60.0
_MARKERS = (FAILED, DEP_FAILED, INTERRUPTED)


class Store:
    """The store at `root`: where steps live, their states, claims on them, and explanations.

    `lease_timeout`: seconds without a heartbeat after which a lease is stale and may be taken over
    (on the lease's own host a lease whose process is gone is stale at once). `heartbeat_interval`
    defaults to a twelfth of it (5 s for the default 60 s). `host` names this machine in leases
    (default: the hostname).
    """

    def __init__(self, root: str | Path, *, lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
                 heartbeat_interval: float | None = None, host: str | None = None):  # fmt: skip
        if lease_timeout <= 0:
            raise ValueError(f"lease_timeout: {lease_timeout} must be positive")
        self.root = Path(root)
        self.lease_timeout = float(lease_timeout)
        self.heartbeat_interval = float(heartbeat_interval or lease_timeout / 12)
        self.host = host or socket.gethostname()

    # -- where ------------------------------------------------------------------------------------

    def step_dir(self, step: Step) -> Path:
        """The step's output directory, `<store>/<stage>/<name>-<hash>` (it may not exist yet)."""
        return artifact_dir(self.root, step.stage, step.name, step.hash)

    def records_dir(self, step: Step) -> Path:
        """Where the store keeps the step's `step.json`, markers and leases."""
        return self._records(step.stage, step.name, step.hash)

    def _records(self, stage: str, name: str, digest: str) -> Path:
        return self.root / stage / RECORDS / f"{name}-{digest}"

    # -- states -----------------------------------------------------------------------------------

    def state(self, step: Step) -> State:
        """The step's state (see the module docstring for the order of precedence)."""
        return self._inspect(step.stage, step.name, step.hash).state

    def is_done(self, step: Step) -> bool:
        """Whether the step's `SUCCESS` exists and its output is whole."""
        return is_complete(self.step_dir(step))

    def holder(self, step: Step) -> LeaseInfo | None:
        """The newest claim on the step that is not released (live or stale), or None."""
        current = self._lease(self.records_dir(step))
        return None if current is None or current.released else current

    def failure(self, step: Step) -> dict | None:
        """The step's `FAILED` record (error_type, message, traceback, owner, host, pid, time), or None."""
        return _read_json(self.records_dir(step) / FAILED)

    def record(self, step: Step) -> dict | None:
        """The step's `step.json` (written when it last started through the store), or None."""
        return _read_json(self.records_dir(step) / STEP_JSON)

    def _lease(self, records: Path) -> LeaseInfo | None:
        return current_lease(records / LEASES, self.host, self.lease_timeout)

    def _inspect(self, stage: str, name: str, digest: str, *, with_record: bool = False) -> StepInfo:
        out = artifact_dir(self.root, stage, name, digest)
        records = self._records(stage, name, digest)

        def info(state: State, detail: str = "") -> StepInfo:
            return StepInfo(stage, name, digest, state, out, detail, _read_json(records / STEP_JSON) if with_record else None)

        if (out / SUCCESS).is_file():
            problem = damage(out)
            return info(State.DONE) if problem is None else info(State.DAMAGED, problem)
        if not records.is_dir():
            return info(State.INTERRUPTED if out.is_dir() else State.NEW, "output without SUCCESS" if out.is_dir() else "")
        lease = self._lease(records)
        if lease is not None and lease.live:
            return info(State.RUNNING, lease.holder_text())
        if (failed := _read_json(records / FAILED)) is not None:
            return info(State.FAILED, f"{failed.get('error_type')}: {_first_line(failed.get('message', ''))}")
        if (dep := _read_json(records / DEP_FAILED)) is not None:
            return info(State.DEP_FAILED, str(dep.get("input")))
        if (stopped := _read_json(records / INTERRUPTED)) is not None:
            return info(State.INTERRUPTED, str(stopped.get("reason", "")))
        if lease is not None and not lease.released:
            return info(State.INTERRUPTED, f"stale lease of {lease.holder_text()}")
        if out.is_dir():
            return info(State.INTERRUPTED, "output without SUCCESS")
        return info(State.NEW)

    def list_steps(self, stage: str | None = None) -> list[StepInfo]:
        """Every step of `stage` (or of all stages) found in the store, with its state; sorted by stage and name."""
        stages = [stage] if stage is not None else sorted(
            p.name for p in _scandir(self.root) if p.is_dir() and not p.name.startswith(".")
        )  # fmt: skip
        found = []
        for stage_name in stages:
            folder = self.root / stage_name
            entries = _scandir(folder) + _scandir(folder / RECORDS)
            keys = {key for p in entries if p.is_dir() and (key := split_dirname(p.name))}
            found.extend(self._inspect(stage_name, name, digest, with_record=True) for name, digest in sorted(keys))
        return found

    def interrupt_job(self, job_id: str, reason: str) -> list[str]:
        """Mark INTERRUPTED every step whose current lease SLURM job `job_id` holds, and release the lease.

        For after the job has ended (cancelled, killed): its processes can't release their leases,
        and on another host the lease would only go stale after `lease_timeout`. Returns the step ids.
        """
        interrupted = []
        for leases in sorted(self.root.glob(f"*/{RECORDS}/*/{LEASES}")):
            records = leases.parent
            current = self._lease(records)
            if current is None or current.released or current.slurm_job_id != str(job_id):
                continue
            self._interrupt(records, current, reason)
            interrupted.append(f"{records.parent.parent.name}/{records.name}")
        return interrupted

    def interrupt_abandoned(self, step: Step, reason: str) -> bool:
        """Mark the step INTERRUPTED and release its lease if the lease's holder is gone; whether it did.

        Gone: its process ended (judged on its own host) or its heartbeat is older than `lease_timeout`.
        A live holder, a released lease or a finished step are left as they are.
        """
        records = self.records_dir(step)
        current = self._lease(records)
        if current is None or current.released or current.live or self.is_done(step):
            return False
        self._interrupt(records, current, reason)
        return True

    def _interrupt(self, records: Path, lease: LeaseInfo, reason: str) -> None:
        content = {"reason": reason, "owner": lease.owner, "slurm_job_id": lease.slurm_job_id, **_who(self.host)}
        _write_json(records / INTERRUPTED, content)
        mark_released(records / LEASES, lease.generation)

    def check_writable(self) -> None:
        """Create the root if missing and write and remove a probe file in it; the OSError when that fails."""
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            write_text_atomic(probe, "dcsl\n")
        finally:
            probe.unlink(missing_ok=True)

    # -- markers ----------------------------------------------------------------------------------

    def mark_dep_failed(self, step: Step, failed_input: Step | str, reason: str = "") -> None:
        """Record that the step did not run because `failed_input` failed (cleared when it next runs)."""
        input_id = failed_input.id if isinstance(failed_input, Step) else str(failed_input)
        _write_json(self.records_dir(step) / DEP_FAILED, {"input": input_id, "reason": reason, **_who(self.host)})

    def mark_failed(self, step: Step, error_type: str, message: str) -> None:
        """Record that the step failed outside any claim (its worker died: killed by the OOM killer, ...).

        The `FAILED` marker is the one a failing claim writes, without a traceback or owner; it is
        cleared when the step next runs.
        """
        self._write_failed(step, error_type, message, "", None)

    def _write_failed(self, step: Step, error_type: str, message: str, trace: str, owner: str | None) -> None:
        content = {"error_type": error_type, "message": message, "traceback": trace, "owner": owner, **_who(self.host)}
        _write_json(self.records_dir(step) / FAILED, content)

    def _start(self, step: Step, lease: Lease) -> None:
        records = self.records_dir(step)
        previous = _read_json(records / STEP_JSON) or {}
        content = {
            "stage": step.stage,
            "name": step.name,
            "hash": step.hash,
            "config": step.config,
            "inputs": list(step.inputs),
            "code": code_version(),
            "attempt": int(previous.get("attempt", 0)) + 1,
            "owner": lease.owner,
            "slurm_job_id": lease.slurm_job_id,
            **_who(self.host),
            "started": time.time(),
        }
        _write_json(records / STEP_JSON, content)
        _clear_markers(records)

    def _finish(self, step: Step) -> None:
        if not self.is_done(step):
            mark_success(self.step_dir(step))
        _clear_markers(self.records_dir(step))

    # -- claims -----------------------------------------------------------------------------------

    @contextmanager
    def claim(self, step: Step, *, heartbeat: bool = True) -> Iterator[Lease | None]:
        """Hold the step's lease for the body, or yield None when this process must not run it.

        None: the step is done, or another process holds a live lease. With a lease: a damaged step's
        `SUCCESS` is moved aside (`stages.artifacts.set_aside`), `step.json` is written and old FAILED /
        DEP_FAILED / INTERRUPTED markers are cleared before the body runs, and a heartbeat thread keeps
        the lease live (`heartbeat=False`: call `lease.beat()` yourself).
        When the body returns, `SUCCESS` is written in the output directory unless the stage wrote it;
        when it raises an Exception, `FAILED` records it (with the traceback) and it propagates;
        KeyboardInterrupt, SystemExit and other BaseExceptions write `INTERRUPTED` instead. The lease
        is released in every case.
        """
        lease = None if self.is_done(step) else acquire(self.records_dir(step) / LEASES, step.id, self.host, self.lease_timeout)
        if lease is None:
            yield None
            return
        try:
            if _listed(self.step_dir(step), SUCCESS):
                if self.is_done(step):  # finished between our look and our claim
                    yield None
                    return
                set_aside(self.step_dir(step))  # damaged: it runs again
            self._start(step, lease)
            if heartbeat:
                lease.start_heartbeat(self.heartbeat_interval)
            try:
                yield lease
            except Exception as error:
                lease.stop_heartbeat()
                trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                self._write_failed(step, type(error).__qualname__, str(error), trace, lease.owner)
                raise
            except BaseException as error:
                lease.stop_heartbeat()
                content = {"reason": type(error).__qualname__, "owner": lease.owner, **_who(self.host)}
                _write_json(self.records_dir(step) / INTERRUPTED, content)
                raise
            lease.stop_heartbeat()
            self._finish(step)
        finally:
            lease.release()

    def run(self, step: Step, work: Callable[[], object], *, wait: bool = True, poll: float = 0.5) -> State:
        """Run `work()` under the step's lease unless it is done; return the step's state afterwards.

        DONE when it finished (here or elsewhere). FAILED when `work` raised (recorded, not
        re-raised), or when another process held the step and it failed there: a step failed by a
        concurrent sweep is not run again by this one. RUNNING only with `wait=False`, when another
        process holds it; with `wait=True` this polls every `poll` seconds and takes over a lease
        that goes stale. KeyboardInterrupt and SystemExit propagate (the step is INTERRUPTED), and
        so does the OSError of a store that can't be written (claiming or recording the step failed:
        a full disk, a read-only filesystem), for the caller to report.
        """
        seen_held = False
        while True:
            state = self.state(step)
            if state is State.DONE:
                return state
            if seen_held and state in (State.FAILED, State.DEP_FAILED):
                return state
            if state is not State.RUNNING:
                ended = self._attempt(step, work)
                if ended is not None:
                    return ended
                state = self.state(step)
                if state is State.DONE:
                    return state
            seen_held = True
            if not wait:
                return State.RUNNING
            time.sleep(poll)

    def _attempt(self, step: Step, work: Callable[[], object]) -> State | None:
        """Run `work` if this process can claim the step: DONE, FAILED (recorded), or None when it can't claim it.

        Any other exception (the store could not be written while claiming or recording) propagates.
        """
        failure = None
        try:
            with self.claim(step) as lease:
                if lease is None:
                    return None
                try:
                    work()
                except Exception as error:
                    failure = error
                    raise
        except Exception as error:
            if error is failure:
                return State.FAILED
            raise
        return State.DONE

    # -- explain ----------------------------------------------------------------------------------

    def explain(self, step: Step) -> Decision:
        """Whether a sweep will run `step`, and why: done, new, config changed (which fields),
        input changed (which), failed before, input failed, interrupted, damaged, running elsewhere."""
        return decide(step, self._inspect(step.stage, step.name, step.hash), self._versions(step))

    def _versions(self, step: Step) -> Iterator[dict]:
        """The `step.json` of each other started version of the step (same stage and name), read lazily."""
        for entry in _scandir(self.root / step.stage / RECORDS):
            key = split_dirname(entry.name)
            if key is None or key[0] != step.name or key[1] == step.hash:
                continue
            if (record := _read_json(Path(entry.path) / STEP_JSON)) is not None:
                yield record


@lru_cache(maxsize=1)
def code_version() -> dict:
    """The code that runs steps: the dcsl version and, from a git checkout, the commit (else None)."""
    commit = None
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
        if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", result.stdout.strip()):
            commit = result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"dcsl": dcsl_version(), "git_commit": commit}


# -- helpers ----------------------------------------------------------------------------------------


def _who(host: str) -> dict:
    return {"host": host, "pid": os.getpid(), "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}


def _write_json(path: Path, content: dict) -> None:
    write_text_atomic(path, json.dumps(content, indent=2, default=str) + "\n")


def _clear_markers(records: Path) -> None:
    for marker in _MARKERS:
        (records / marker).unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _listed(folder: Path, name: str) -> bool:
    """Whether `folder` lists `name`: read from the directory itself, not a (possibly stale on NFS) cached lookup."""
    try:
        return name in os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
