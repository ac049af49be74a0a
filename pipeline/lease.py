"""Leases: one process's claim on a step, made without locks so that it holds on shared filesystems.

A step's claims live in its records directory (`pipeline.store`), in `leases/`:

    lease.G      claim number G: owner, host, pid, SLURM job; its mtime is the heartbeat
    released.G   claim G ended

Leases use only atomic creation of a name (a fully written temporary file hard-linked to
`lease.G`, the link count checked as open(2) advises for NFS), never flock, so they hold on shared
filesystems. Claim G+1 can only be made by one process; it is made only when claim G is released
or stale: its heartbeat is older than `lease_timeout`, or its process is gone (checked only on the
same host, boot and pid namespace). A claim file that is not one this code writes (garbage, an
empty or hand-edited file) is stale at once. A holder that finds a claim newer than its own has
lost the lease (`Lease.lost`).

A claim that can't be written (the folder is a file, the disk is full, the filesystem read-only)
raises its OSError: only "that claim exists already" means another process holds the step.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

_LEASE = re.compile(r"^lease\.(\d+)$")
_CLAIM_FIELDS = {"owner": str, "host": str, "pid": int}


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

    def holder_text(self) -> str:
        """Who holds the claim, for messages: `<host>, pid <pid>[, SLURM job <id>]`."""
        job = f", SLURM job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"{self.host}, pid {self.pid}{job}"


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
            mark_released(self.path.parent, self.generation)


def acquire(leases: Path, step_id: str, host: str, lease_timeout: float) -> Lease | None:
    """Make the next claim in the folder `leases` (created if missing) for this process.

    None when a live claim holds the step or another process made the same claim first; the OSError
    when the folder or the claim can't be written.
    """
    leases.mkdir(parents=True, exist_ok=True)
    current = current_lease(leases, host, lease_timeout)
    if current is not None and current.live:
        return None
    generation = 0 if current is None else current.generation + 1
    content = {
        "step": step_id,
        "owner": uuid.uuid4().hex,
        "host": host,
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "pidns": _pid_namespace(),
        "boot_id": _boot_id(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.time(),
    }
    path = leases / f"lease.{generation}"
    won = _create_file(path, json.dumps(content, indent=2) + "\n")
    return Lease(path, generation, content) if won else None


def current_lease(leases: Path, host: str, lease_timeout: float) -> LeaseInfo | None:
    """The newest claim in the folder `leases` (released, stale or live), as seen from `host`; None when there is none."""
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
    content = _claim_content(text)
    released = f"released.{generation}" in names or (leases / f"released.{generation}").exists()
    live = not released and content is not None and _alive(content, heartbeat, host, lease_timeout)
    content = content or {}
    return LeaseInfo(generation, content.get("owner", "?"), content.get("host", "?"), int(content.get("pid", -1)),
                     content.get("slurm_job_id"), float(content.get("started", 0.0)), heartbeat, released, live)  # fmt: skip


def mark_released(leases: Path, generation: int) -> None:
    """Mark claim `generation` in the folder `leases` ended (a no-op when it already is)."""
    with suppress(FileExistsError):
        _create_file(leases / f"released.{generation}", "")


def _claim_content(text: str) -> dict | None:
    """The content of a claim file this code wrote (a JSON object with owner, host and pid); None for anything else.

    We link only complete files, so anything else was never a claim of ours: it holds nothing.
    """
    try:
        content = json.loads(text)
    except ValueError:
        return None
    ours = isinstance(content, dict) and all(isinstance(content.get(key), kind) for key, kind in _CLAIM_FIELDS.items())
    return content if ours else None


def _alive(content: dict, heartbeat: float, host: str, lease_timeout: float) -> bool:
    if time.time() - heartbeat > lease_timeout:
        return False
    same_kernel = content.get("boot_id") == _boot_id() and content.get("pidns") == _pid_namespace()
    if content.get("host") == host and same_kernel:
        return _process_alive(int(content.get("pid", -1)), content.get("pid_start"))
    return True


def _create_file(path: Path, text: str) -> bool:
    """Create `path` holding `text` if no file has that name: True when this call created it.

    The text goes to a unique temporary file first, which is then hard-linked to `path`: the name
    appears atomically with its full content. A link that reports an error (an NFS retry) may still
    have succeeded, so the temporary file's link count decides; any other failure to write raises.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:  # a full disk fails here: the half-written file goes too
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
            return True
        except OSError as error:
            if os.stat(tmp).st_nlink == 2:  # linked after all (a retried NFS call reports an error)
                return True
            if isinstance(error, FileExistsError):
                return False
            raise
    finally:
        tmp.unlink(missing_ok=True)


# -- is the holder's process still there? (same host, boot and pid namespace only) ----------------------


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
