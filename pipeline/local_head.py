"""A local Ray head that lives exactly as long as the driver that started it.

`ray.init()` without an address starts the head's processes as the driver's children; when the
driver is killed (kill -9, the OOM killer, a closed terminal), Ray's own fate sharing stops the GCS
and the raylet, but the raylet's agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) ignore
SIGTERM, outlive it and pile up over restarts. So a sweep starts its local head itself:

    driver ──pipe──> watchdog (`python -I pipeline/local_head.py`, its own session)
                        └── ray start --head --block --temp-dir <private dir>
                              └── GCS, raylet, agents, workers ... (all in the watchdog's session)

The watchdog starts the head, prints `ready <address>` and then reads its stdin, the write end of
which only the driver holds. When that pipe closes, because the driver stopped the head or because
the driver is gone however it died, the watchdog kills every process of its session (the whole
Ray cluster, workers included) and exits. Being in a session of its own, neither the head nor the
watchdog gets the signals of the driver's terminal or process group: Ctrl-C reaches the driver
alone, which stops its tasks cleanly first.

The head's temp dir is a fresh folder `dcsl-ray-XXXXXXXX` under `RAY_TMPDIR` (else the system's temp
dir), so that the head's address file is not the one a plain `ray.init()` elsewhere on the machine
would join, and its session (logs, sockets) is easy to find. The watchdog uses only the standard
library and runs isolated (`-I`) from this file, whatever the caller's path: it starts in a fraction
of Ray's own start-up.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import NoReturn

READY = "ready"
STARTED = "Ray runtime started."  # what `ray start` prints once the head's processes are up


class LocalHead:
    """A Ray head on this machine, started by a watchdog that stops it when this process goes."""

    def __init__(self, watchdog: subprocess.Popen, address: str):
        self.watchdog = watchdog
        self.address = address

    @classmethod
    def start(cls, timeout: float = 120.0) -> LocalHead:
        """Start the head and wait (up to `timeout` seconds) until it takes drivers; RuntimeError when it fails."""
        watchdog = subprocess.Popen([sys.executable, "-I", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip
        line = _read_line(watchdog, timeout)
        if line is None or not line.startswith(READY + " "):
            _stop(watchdog, timeout)
            why = f"nothing within {timeout:.0f} s" if line is None else line.strip() or f"its watchdog exited with {watchdog.returncode}"
            raise RuntimeError(f"the local Ray head did not start: {why}")
        return cls(watchdog, line.split()[1])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the head: every process of it is gone when this returns (or `timeout` seconds passed)."""
        _stop(self.watchdog, timeout)


def _stop(watchdog: subprocess.Popen, timeout: float) -> None:
    """Close the watchdog's stdin (it then kills the head's processes) and wait for it to exit."""
    watchdog.stdin.close()
    try:
        watchdog.wait(timeout)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()
    watchdog.stdout.close()


def _read_line(process: subprocess.Popen, timeout: float) -> str | None:
    """The first line `process` prints within `timeout` seconds ("" when it exits without one), or None."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else None


# -- the watchdog ---------------------------------------------------------------------------------------


def main() -> None:
    """The watchdog: start the head in this session, say where it listens, stop it all when stdin closes."""
    threading.Thread(target=_stop_when_driver_goes, daemon=True).start()
    try:
        head, port = _start_head()
    except OSError as error:  # the temp dir can't be made, Python can't be started
        print(error, flush=True)
        _stop_session()
    print(_announcement(head, port), flush=True)
    for _ in head.stdout:  # `ray start --block` returns when a process of the head died: it stops the rest
        pass
    _stop_session()


def _start_head() -> tuple[subprocess.Popen, int]:
    """`ray start --head --block` on a free port with a fresh temp dir, as a child of this process; and the port."""
    base = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    temp, port = tempfile.mkdtemp(prefix="dcsl-ray-", dir=base), _free_port()
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
               f"--temp-dir={temp}", "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    head = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    return head, port


def _announcement(head: subprocess.Popen, port: int) -> str:
    """`ready HOST:PORT` once the head's processes are up; else why not (the last lines `ray start` printed)."""
    last: deque[str] = deque(maxlen=20)
    for line in head.stdout:
        last.append(line.strip())
        if STARTED in line:
            return f"{READY} 127.0.0.1:{port}"
    return "ray start exited: " + " | ".join(filter(None, last))


def _stop_when_driver_goes() -> None:
    """Wait until the driver closes our stdin (or dies), then stop the whole head."""
    sys.stdin.buffer.read()
    _stop_session()


def _stop_session(patience: float = 10.0) -> NoReturn:
    """SIGKILL every process of this session but this one (new ones too, until none is left), then exit."""
    if not Path("/proc").is_dir():  # no process table to read: the head's group, this process last
        os.killpg(0, signal.SIGKILL)
    me, session, deadline = os.getpid(), os.getsid(0), time.monotonic() + patience
    while (others := [pid for pid in _session_members(session) if pid != me]) and time.monotonic() < deadline:
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    os._exit(0)


def _session_members(session: int) -> list[int]:
    """The live (not zombie) processes of `session`, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _, _, sid = text[text.rindex(")") + 2 :].split()[:4]
        if int(sid) == session and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
