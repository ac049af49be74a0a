"""The content-addressed store as the pipeline sees it: steps, their states, leases, and why a step runs.

A *step* is one unit of work of a sweep: `Step(stage, name, config, inputs)`. Its hash covers the
fully resolved config and the ids of its inputs (each input id ends with that input's hash), so
changing a hyperparameter, or anything upstream, gives a new hash and a new directory; the code
version is recorded in `step.json`, never hashed. Layout:

    <store>/<stage>/<name>-<hash>/          the output, written by the stage; `SUCCESS` last
    <store>/<stage>/.steps/<name>-<hash>/   the store's records of the step:
        step.json       resolved config, inputs, code version, attempt, who started it and when
        FAILED          JSON: error type, message, traceback, host, pid, time
        DEP_FAILED      JSON: which input failed
        INTERRUPTED     JSON: why the run stopped (Ctrl-C, SystemExit, ...); it resumes on rerun
        leases/lease.G     claim number G: owner, host, pid, SLURM job; its mtime is the heartbeat
        leases/released.G  claim G ended

The records live beside the output, not in it, because stages that build their output atomically
(`stages.artifacts.atomic_directory`) replace the output directory wholesale.

States, first match wins: DONE (`SUCCESS` exists: whoever wrote it, the store or a stage);
RUNNING (a live lease); FAILED; DEP_FAILED; INTERRUPTED (a marker, a stale lease, or partial output
without a lease: a process was preempted or killed, the rerun resumes from its checkpoints); NEW.

Leases use only atomic creation of a name (a fully written temporary file hard-linked to
`lease.G`, the link count checked as open(2) advises for NFS), never flock, so they hold on shared
filesystems. Claim G+1 can only be made by one process; it is made only when claim G is released
or stale: its heartbeat is older than `lease_timeout`, or its process is gone (checked only on the
same host, boot and pid namespace). A holder that finds a claim newer than its own has lost the
lease (`Lease.lost`).

Use, inside whatever process does the work (a Ray task, a plain loop):

    state = store.run(step, lambda: train(config, data_path, store.root))   # DONE / FAILED / ...

or, spelled out, `with store.claim(step) as lease:` and work only when `lease` is not None.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from scaling import dcsl_version
from scaling.atomic import write_text_atomic
from stages.artifacts import SUCCESS, artifact_dir, config_hash

RECORDS = ".steps"
STEP_JSON = "step.json"
FAILED = "FAILED"
DEP_FAILED = "DEP_FAILED"
INTERRUPTED = "INTERRUPTED"
LEASES = "leases"
DEFAULT_LEASE_TIMEOUT = 60.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STEP_DIR = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)-(?P<hash>[0-9a-f]{8,64})$")
_STEP_ID = re.compile(r"^(?P<stage>[^/]+)/(?P<name>.+)-(?P<hash>[0-9a-f]{8,64})$")
_LEASE = re.compile(r"^lease\.(\d+)$")


class State(str, Enum):
    """Where a step stands, read from the filesystem alone."""

    NEW = "new"
    DONE = "done"
    FAILED = "failed"
    DEP_FAILED = "dep_failed"
    INTERRUPTED = "interrupted"
    RUNNING = "running"


@dataclass(frozen=True)
class Step:
    """One unit of work: `<stage>/<name>-<hash>`, the hash over `config` and `inputs`.

    `config` is the step's fully resolved config (JSON-serialisable; a pydantic model should be
    passed as `model.model_dump(mode="json")`). `inputs` are the steps it reads, as `Step`s or as
    ids (`"tokenize/corpus-<hash>"`; a bare hash works too, but then `explain` can only name an
    input by its position). `digest`, when given, replaces the computed hash: for stages that
    already name their output with a hash of their own (`stages.train.run_hash`), so the store
    and the stage agree on the directory. It must then cover the inputs itself.
    """

    stage: str
    name: str
    config: Mapping[str, Any]
    inputs: Sequence[Step | str] = ()
    digest: str | None = None

    def __post_init__(self) -> None:
        for label, value in (("stage", self.stage), ("name", self.name)):
            if not _NAME.match(value):
                raise ValueError(f"step {label}: {value!r} is not a valid name (letters, digits, '.', '_', '-')")
        if self.digest is not None and not re.fullmatch(r"[0-9a-f]{8,64}", self.digest):
            raise ValueError(f"step digest: {self.digest!r} is not 8 to 64 lowercase hex digits")
        object.__setattr__(self, "config", json.loads(json.dumps(dict(self.config), sort_keys=True, default=str)))
        object.__setattr__(self, "inputs", tuple(i.id if isinstance(i, Step) else str(i) for i in self.inputs))

    @cached_property
    def hash(self) -> str:
        """The step's content hash (16 hex digits unless `digest` was given)."""
        return self.digest or config_hash({"config": self.config, "inputs": list(self.inputs)})

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def id(self) -> str:
        """`<stage>/<name>-<hash>`: the step's path relative to the store; what dependants list as an input."""
        return f"{self.stage}/{self.name}-{self.hash}"


class LeaseInfo(NamedTuple):
    """A claim on a step as another process sees it."""

    generation: int
    owner: str
    host: str
    pid: int
    slurm_job_id: str | None
    started: float
    heartbeat: float
    released: bool
    live: bool


class StepInfo(NamedTuple):
    """One step found in the store, for `dcsl status`."""

    stage: str
    name: str
    hash: str
    state: State
    path: Path
    detail: str
    """The failure message, the holder of a running step, the failed input; empty otherwise."""
    record: dict | None
    """The step's `step.json` when it was started through the store."""


@dataclass(frozen=True)
class Decision:
    """Whether a sweep will run a step, and why (`dcsl sweep --explain`)."""

    run: bool
    reason: str
    state: State
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """For a new step: dotted config field (or `inputs.<stage>/<name>`) -> (previous value, new value); None where unset."""


class Lease:
    """This process's claim on a step. The heartbeat is the lease file's mtime, set by `beat()`."""

    def __init__(self, path: Path, generation: int, content: dict):
        self.path = path
        self.generation = generation
        self.owner: str = content["owner"]
        self.host: str = content["host"]
        self.pid: int = content["pid"]
        self.slurm_job_id: str | None = content["slurm_job_id"]
        self.started: float = content["started"]
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        """Refresh the heartbeat; False (and `lost` set) once another process has taken the lease over."""
        if self.lost:
            return False
        now = time.time()
        try:
            os.utime(self.path, (now, now))
        except FileNotFoundError:
            self.lost = True
        except OSError:
            return True  # a transient error on a shared filesystem: try again at the next beat
        if (self.path.parent / f"lease.{self.generation + 1}").exists():
            self.lost = True
        return not self.lost

    @property
    def heartbeat(self) -> float:
        """The time of the last heartbeat (seconds since the epoch)."""
        return os.stat(self.path).st_mtime

    def start_heartbeat(self, interval: float) -> None:
        """Beat every `interval` seconds from a daemon thread until `stop_heartbeat` or the lease is lost."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval) and self.beat():
                pass

        self._thread = threading.Thread(target=loop, name=f"dcsl-lease-{self.path.parent.parent.name}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread (if any) and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def release(self) -> None:
        """End the claim: stop beating and mark it released (a lost lease is left to its new owner)."""
        self.stop_heartbeat()
        if not self.lost:
            with suppress(FileExistsError):
                _create_file(self.path.parent / f"released.{self.generation}", "")


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
        """Whether the step's `SUCCESS` exists."""
        return (self.step_dir(step) / SUCCESS).is_file()

    def holder(self, step: Step) -> LeaseInfo | None:
        """The newest claim on the step that is not released (live or stale), or None."""
        current = self._current_lease(self.records_dir(step) / LEASES)
        return None if current is None or current.released else current

    def failure(self, step: Step) -> dict | None:
        """The step's `FAILED` record (error_type, message, traceback, host, pid, time), or None."""
        return _read_json(self.records_dir(step) / FAILED)

    def record(self, step: Step) -> dict | None:
        """The step's `step.json` (written when it last started through the store), or None."""
        return _read_json(self.records_dir(step) / STEP_JSON)

    def _inspect(self, stage: str, name: str, digest: str, *, with_record: bool = False) -> StepInfo:
        out = artifact_dir(self.root, stage, name, digest)
        records = self._records(stage, name, digest)

        def info(state: State, detail: str = "") -> StepInfo:
            return StepInfo(stage, name, digest, state, out, detail, _read_json(records / STEP_JSON) if with_record else None)

        if (out / SUCCESS).is_file():
            return info(State.DONE)
        if not records.is_dir():
            return info(State.INTERRUPTED if out.is_dir() else State.NEW, "output without SUCCESS" if out.is_dir() else "")
        lease = self._current_lease(records / LEASES)
        if lease is not None and lease.live:
            return info(State.RUNNING, _holder_text(lease))
        if (failed := _read_json(records / FAILED)) is not None:
            return info(State.FAILED, f"{failed.get('error_type')}: {_first_line(failed.get('message', ''))}")
        if (dep := _read_json(records / DEP_FAILED)) is not None:
            return info(State.DEP_FAILED, str(dep.get("input")))
        if (stopped := _read_json(records / INTERRUPTED)) is not None:
            return info(State.INTERRUPTED, str(stopped.get("reason", "")))
        if lease is not None and not lease.released:
            return info(State.INTERRUPTED, f"stale lease of {_holder_text(lease)}")
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
            keys = {_split(p.name) for p in entries if p.is_dir() and _STEP_DIR.match(p.name)}
            found.extend(self._inspect(stage_name, name, digest, with_record=True) for name, digest in sorted(keys))
        return found

    def interrupt_job(self, job_id: str, reason: str) -> list[str]:
        """Mark INTERRUPTED every step whose current lease SLURM job `job_id` holds, and release the lease.

        For after the job has ended (cancelled, killed): its processes can't release their leases,
        and on another host the lease would only go stale after `lease_timeout`. Returns the step ids.
        """
        interrupted = []
        for leases in sorted(self.root.glob(f"*/{RECORDS}/*/{LEASES}")):
            current = self._current_lease(leases)
            if current is None or current.released or current.slurm_job_id != str(job_id):
                continue
            records = leases.parent
            content = {"reason": reason, "owner": current.owner, "slurm_job_id": str(job_id), **_who(self.host)}
            write_text_atomic(records / INTERRUPTED, json.dumps(content, indent=2) + "\n")
            with suppress(FileExistsError):
                _create_file(leases / f"released.{current.generation}", "")
            interrupted.append(f"{records.parent.parent.name}/{records.name}")
        return interrupted

    # -- markers ----------------------------------------------------------------------------------

    def mark_dep_failed(self, step: Step, failed_input: Step | str, reason: str = "") -> None:
        """Record that the step did not run because `failed_input` failed (cleared when it next runs)."""
        input_id = failed_input.id if isinstance(failed_input, Step) else str(failed_input)
        self._write_marker(step, DEP_FAILED, {"input": input_id, "reason": reason, **_who(self.host)})

    def _write_marker(self, step: Step, marker: str, content: dict) -> None:
        write_text_atomic(self.records_dir(step) / marker, json.dumps(content, indent=2, default=str) + "\n")

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
        write_text_atomic(records / STEP_JSON, json.dumps(content, indent=2, default=str) + "\n")
        for marker in (FAILED, DEP_FAILED, INTERRUPTED):
            (records / marker).unlink(missing_ok=True)

    def _finish(self, step: Step) -> None:
        success = self.step_dir(step) / SUCCESS
        if not success.is_file():
            write_text_atomic(success, "")
        for marker in (FAILED, DEP_FAILED, INTERRUPTED):
            (self.records_dir(step) / marker).unlink(missing_ok=True)

    # -- claims -----------------------------------------------------------------------------------

    @contextmanager
    def claim(self, step: Step, *, heartbeat: bool = True) -> Iterator[Lease | None]:
        """Hold the step's lease for the body, or yield None when this process must not run it.

        None: the step is done, or another process holds a live lease. With a lease: `step.json` is
        written and old FAILED / DEP_FAILED / INTERRUPTED markers are cleared before the body runs,
        and a heartbeat thread keeps the lease live (`heartbeat=False`: call `lease.beat()` yourself).
        When the body returns, `SUCCESS` is written in the output directory unless the stage wrote it;
        when it raises an Exception, `FAILED` records it (with the traceback) and it propagates;
        KeyboardInterrupt, SystemExit and other BaseExceptions write `INTERRUPTED` instead. The lease
        is released in every case.
        """
        lease = None if self.is_done(step) else self._acquire(step)
        if lease is None:
            yield None
            return
        try:
            if _listed(self.step_dir(step), SUCCESS):  # finished between our look and our claim
                yield None
                return
            self._start(step, lease)
            if heartbeat:
                lease.start_heartbeat(self.heartbeat_interval)
            try:
                yield lease
            except Exception as error:
                lease.stop_heartbeat()
                self._write_marker(step, FAILED, {
                    "error_type": type(error).__qualname__,
                    "message": str(error),
                    "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
                    "owner": lease.owner,
                    **_who(self.host),
                })  # fmt: skip
                raise
            except BaseException as error:
                lease.stop_heartbeat()
                reason = type(error).__qualname__
                self._write_marker(step, INTERRUPTED, {"reason": reason, "owner": lease.owner, **_who(self.host)})
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
        that goes stale. KeyboardInterrupt and SystemExit propagate (the step is INTERRUPTED).
        """
        seen_held = False
        while True:
            state = self.state(step)
            if state is State.DONE:
                return state
            if seen_held and state in (State.FAILED, State.DEP_FAILED):
                return state
            if state is not State.RUNNING:
                ran, failed = False, False
                try:
                    with self.claim(step) as lease:
                        if lease is not None:
                            try:
                                work()
                            except Exception:
                                failed = True
                                raise
                            ran = True
                except Exception:
                    if failed:
                        return State.FAILED
                    raise
                if ran:
                    return State.DONE
                state = self.state(step)
                if state is State.DONE:
                    return state
            seen_held = True
            if not wait:
                return State.RUNNING
            time.sleep(poll)

    def _acquire(self, step: Step) -> Lease | None:
        leases = self.records_dir(step) / LEASES
        try:
            leases.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        current = self._current_lease(leases)
        if current is not None and current.live:
            return None
        generation = 0 if current is None else current.generation + 1
        content = {
            "step": step.id,
            "owner": uuid.uuid4().hex,
            "host": self.host,
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "pidns": _pid_namespace(),
            "boot_id": _boot_id(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.time(),
        }
        path = leases / f"lease.{generation}"
        try:
            won = _create_file(path, json.dumps(content, indent=2) + "\n")
        except OSError:
            return None
        return Lease(path, generation, content) if won else None

    def _current_lease(self, leases: Path) -> LeaseInfo | None:
        try:
            names = os.listdir(leases)
        except (FileNotFoundError, NotADirectoryError):
            return None
        generations = [int(m.group(1)) for n in names if (m := _LEASE.match(n))]
        if not generations:
            return None
        generation = max(generations)
        path = leases / f"lease.{generation}"
        try:
            with open(path, encoding="utf-8") as handle:  # open + fstat: fresh attributes on NFS (close-to-open)
                heartbeat = os.fstat(handle.fileno()).st_mtime
                text = handle.read()
        except OSError:  # vanished or unreadable for a moment: treat it as held; a later look decides
            return LeaseInfo(generation, "?", "?", -1, None, time.time(), time.time(), False, True)
        try:
            content = json.loads(text)
        except ValueError:
            content = {}  # never written by us (we link complete files); its heartbeat alone decides
        released = f"released.{generation}" in names or (leases / f"released.{generation}").exists()
        live = not released and self._alive(content, heartbeat)
        return LeaseInfo(generation, content.get("owner", "?"), content.get("host", "?"), int(content.get("pid", -1)),
                         content.get("slurm_job_id"), float(content.get("started", 0.0)), heartbeat, released, live)  # fmt: skip

    def _alive(self, content: dict, heartbeat: float) -> bool:
        if time.time() - heartbeat > self.lease_timeout:
            return False
        same_kernel = content.get("boot_id") == _boot_id() and content.get("pidns") == _pid_namespace()
        if content.get("host") == self.host and same_kernel:
            return _process_alive(int(content.get("pid", -1)), content.get("pid_start"))
        return True

    # -- explain ----------------------------------------------------------------------------------

    def explain(self, step: Step) -> Decision:
        """Whether a sweep will run `step`, and why: done, new, config changed (which fields),
        input changed (which), failed before, input failed, interrupted, running elsewhere."""
        info = self._inspect(step.stage, step.name, step.hash)
        state = info.state
        if state is State.DONE:
            return Decision(False, "done", state)
        if state is State.RUNNING:
            return Decision(False, f"running elsewhere ({info.detail})", state)
        if state is State.FAILED:
            return Decision(True, f"failed before: {info.detail}", state)
        if state is State.DEP_FAILED:
            return Decision(True, f"input failed before: {info.detail}", state)
        if state is State.INTERRUPTED:
            how = "resumes from checkpoint" if self.step_dir(step).is_dir() else "starts again"
            return Decision(True, f"interrupted: {how}", state)
        previous = self._previous(step)
        if previous is None:
            return Decision(True, "new", state)
        config_changes = _diff(_flatten(previous.get("config", {})), _flatten(step.config))
        input_changes = _diff(_input_keys(previous.get("inputs", [])), _input_keys(step.inputs))
        parts = []
        if config_changes:
            parts.append("config changed: " + ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in config_changes.items()))
        if input_changes:
            parts.append("input changed: " + ", ".join(f"{a or '(none)'} -> {b or '(none)'}" for a, b in input_changes.values()))
        changed = {**config_changes, **{f"inputs.{k}": v for k, v in input_changes.items()}}
        return Decision(True, "; ".join(parts) or "new", state, changed)

    def _previous(self, step: Step) -> dict | None:
        """The `step.json` of the most recently started other version of this step (same stage and name)."""
        best: dict | None = None
        for entry in _scandir(self.root / step.stage / RECORDS):
            name, digest = _split(entry.name)
            if name != step.name or digest == step.hash:
                continue
            record = _read_json(Path(entry.path) / STEP_JSON)
            if record is not None and (best is None or record.get("started", 0) > best.get("started", 0)):
                best = record
        return best


# -- helpers ----------------------------------------------------------------------------------------


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


def _create_file(path: Path, text: str) -> bool:
    """Create `path` holding `text` if no file has that name: True when this call created it.

    The text goes to a unique temporary file first, which is then hard-linked to `path`: the name
    appears atomically with its full content. A link that reports an error (an NFS retry) may still
    have succeeded, so the temporary file's link count decides.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "x", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            return os.stat(tmp).st_nlink == 2
    finally:
        tmp.unlink(missing_ok=True)


def _who(host: str) -> dict:
    return {"host": host, "pid": os.getpid(), "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}


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


def _split(dirname: str) -> tuple[str, str]:
    name, _, digest = dirname.rpartition("-")
    return name, digest


def _holder_text(lease: LeaseInfo) -> str:
    job = f", SLURM job {lease.slurm_job_id}" if lease.slurm_job_id else ""
    return f"{lease.host}, pid {lease.pid}{job}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, default=str)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {dotted.key: leaf}; lists are leaves."""
    if isinstance(value, Mapping) and (value or not prefix):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for keys whose values differ; a key missing on one side reads as None there."""
    keys = list(new) + [k for k in old if k not in new]
    return {k: (old.get(k), new.get(k)) for k in keys if k not in old or k not in new or old[k] != new[k]}


def _input_keys(inputs: Sequence[str]) -> dict[str, str]:
    """Inputs keyed by `<stage>/<name>` (by position for bare hashes), so a changed input is named."""
    keyed = {}
    for position, input_id in enumerate(inputs):
        match = _STEP_ID.match(input_id)
        keyed[f"{match['stage']}/{match['name']}" if match else f"#{position}"] = input_id
    return keyed


@lru_cache(maxsize=1)
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


@lru_cache(maxsize=1)
def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of a process from /proc, or None where unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def _process_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _process_alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` of this host and namespace runs and is the one that started at `start`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no /proc at all: trust kill(0); else it just exited
    state, started = stat
    return state not in ("Z", "X") and (start is None or started == start)
