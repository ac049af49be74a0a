"""The mini sweep that the end-to-end tests run with `dcsl sweep` in real processes, and what they look
at: its store (finished runs, attempts, leases, the law) and the processes of its Ray session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import yaml

DCSL = str(Path(sys.executable).with_name("dcsl"))
SWEEP = {
    "name": "mini",
    "data": {
        "name": "mini",
        "corpus": {"source": "stdlib", "max_documents": 300},
        "tokenizer": {"vocab_size": 512, "training_characters": "300K"},
        "validation_tokens": "20K",
    },
    "models": [
        {"name": "s", "layers": 1, "width": 32, "heads": 1},
        {"name": "m", "layers": 2, "width": 64, "heads": 2, "train": {"optimizer": {"lr": 2.0e-3}}},
    ],
    "grid": [{"unique_tokens": ["20K", "60K"], "epochs": [1, 4]}],
    "train": {"seq_len": 64, "batch_tokens": 1024, "checkpoint_every": 10},
    "fit": {"base": "c4"},
    "wandb": {"mode": "disabled"},
}
RUNS = 8
T = TypeVar("T")


@lru_cache(maxsize=1)
def _hf_home() -> str:
    return os.environ.get("HF_HOME") or tempfile.mkdtemp(prefix="dcsl-hf-")


def env(ray_tmpdir: Path | None = None) -> dict:
    """The environment of a test's `dcsl sweep`: offline, no injected failure; its Ray session under `ray_tmpdir`."""
    values = dict(os.environ, HF_HOME=_hf_home(), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    values.pop("DCSL_INJECT_FAILURE", None)
    if ray_tmpdir is not None:
        values["RAY_TMPDIR"] = str(ray_tmpdir)
    return values


def write(folder: Path, store: Path, sweep: dict = SWEEP) -> Path:
    """Write `sweep` with its store to `folder/sweep.yaml`."""
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**sweep, "store": str(store)}))
    return path


def run(config: Path, *extra: str, environment: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`dcsl sweep config extra...` to its end."""
    command = [DCSL, "sweep", str(config), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=environment or env(), timeout=timeout)


def start(config: Path, environment: dict | None = None, **options) -> subprocess.Popen:
    """`dcsl sweep config`, started (output discarded unless `options` say otherwise)."""
    options = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **options}
    return subprocess.Popen([DCSL, "sweep", str(config)], env=environment or env(), **options)


def wait_for(found: Callable[[], T], sweep: subprocess.Popen | None = None, timeout: float = 300) -> T:
    """Poll `found()` until it is truthy and return it; fail if `sweep` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert sweep is None or sweep.poll() is None, f"the sweep exited with {sweep.returncode} first"
        assert time.monotonic() < deadline, f"not found within {timeout} s"
        time.sleep(0.05)
    return value


def successes(store: Path) -> dict[str, int]:
    """SUCCESS modification times of every finished train step: a step that ran again gets a new one."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (store / "train").glob("*/SUCCESS")}


def attempts(store: Path) -> dict[str, int]:
    """How many times each train step was started (the store's step.json counts attempts)."""
    return {p.parent.name: json.loads(p.read_text())["attempt"] for p in (store / "train" / ".steps").glob("*/step.json")}


def leases(store: Path) -> list[Path]:
    """Every claim ever made on a train step (`lease.G` files): one more each time a run starts or resumes."""
    return list((store / "train" / ".steps").glob("*/leases/lease.*"))


def law(store: Path) -> dict:
    """The store's one law.json."""
    (path,) = (store / "fit").glob("*/law.json")
    return json.loads(path.read_text())


def records(store: Path) -> dict[str, dict]:
    """The run.json of every finished train step, by run directory name."""
    return {p.parent.name: json.loads(p.read_text()) for p in (store / "train").glob("*/run.json")}


def session_processes(folder: Path) -> list[int]:
    """The live processes of the Ray session under `folder`: whose command line, environment or open files name it.

    Ray's agents overwrite their environment with their process title, but keep log files of the
    session open; the watchdog and `ray start` have it in their environment, the others in their
    command line or open files. Processes this user can't inspect are not ours.
    """
    name = str(folder).encode()
    return [int(proc.name) for proc in Path("/proc").glob("[0-9]*") if _alive(proc) and _names(proc, name)]


def _alive(proc: Path) -> bool:
    try:
        text = (proc / "stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


def _names(proc: Path, name: bytes) -> bool:
    try:
        if name in (proc / "cmdline").read_bytes() or name in (proc / "environ").read_bytes():
            return True
        links = list((proc / "fd").iterdir())
    except OSError:
        return False
    return any(name in _target(link) for link in links)


def _target(link: Path) -> bytes:
    try:
        return os.readlink(link).encode()
    except OSError:  # closed meanwhile
        return b""
