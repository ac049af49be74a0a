"""Starting a run on this machine: in this process, or as `processes` ranks under torchrun.

`train(config, data_path, store)` returns the finished run directory, reusing it when it is finished
and whole (`stages.artifacts.is_complete`) and resuming from its latest checkpoint otherwise: a
damaged finished run resumes from its final checkpoint, so it only evaluates and writes its record
again. One torch rank runs in this process; several ranks (or a DeepSpeed run, which always wants a
process group) run under `python -m torch.distributed.run`, whose progress is followed through
`metrics.jsonl`.

Rank 0 writes `run.json` only once every rank has finished the run, so a run whose record exists
is complete even if a rank then dies on its way out (a crash at interpreter exit): it is finished,
with a `TeardownWarning` (also written to the workers' log). Without a record, a non-zero exit
fails the run: `RunDiverged` if the run recorded a divergence, `WorkersFailed` otherwise.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from scaling.errors import InputError
from stages.artifacts import artifact_dir, is_complete, mark_success
from stages.checkpoint import STATE, latest
from stages.data import TokenData
from stages.distributed import free_port
from stages.metrics import METRICS
from stages.run_config import RunConfig
from stages.record import RECORD
from stages.train import FAILED, Progress, RunDiverged, run_hash, train_loop, write_run_config

STAGE = "train"
WORKER_LOG = "workers.log"


class WorkersFailed(RuntimeError):
    """The ranks of a run exited with an error; the message ends with their log's last lines."""


class TeardownWarning(UserWarning):
    """A rank exited with an error after the run had finished (its record written); the run is complete."""


def run_path(config: RunConfig, data_path: Path, store: Path) -> Path:
    """Where the run lives in the store: `<store>/train/<name>-<hash>`."""
    return artifact_dir(store, STAGE, config.name, run_hash(config, TokenData(data_path)))


def check_fits_data(config: RunConfig, data: TokenData) -> None:
    """InputError unless the corpus holds the run's U unique tokens and a validation window of seq_len + 1."""
    data.budget(config.unique_tokens)
    validation = min(data.manifest["validation"]["tokens"], config.eval_tokens or data.manifest["validation"]["tokens"])
    if validation <= config.seq_len:
        raise InputError("seq_len", f"{config.seq_len} is not shorter than the {validation} validation tokens of {data.manifest['name']}; "
            f"raise data.validation_tokens or lower seq_len"
        )


def check_resumable(config: RunConfig, run_dir: Path, world: int) -> None:
    """InputError if the run's latest checkpoint was written by another number of ranks."""
    found = latest(run_dir)
    if found is not None:
        written_by = json.loads((found / STATE).read_text())["world"]
        if written_by != world:
            raise InputError("processes", f"the run resumes from {found}, written by {written_by} rank(s); resume it with "
                f"{written_by} (this run has {world}), or delete {found.parent} to start over"
            )


def prepare(config: RunConfig, data_path: Path, store: Path, world: int | None = None, run_dir: Path | None = None) -> Path:
    """Check the run against its data and its checkpoints, and set up its directory (config saved, old failure cleared);
    the directory is `run_path`'s unless given (a WSD trunk's or branch's step folder)."""
    run_dir = Path(run_dir) if run_dir is not None else run_path(config, data_path, store)
    check_fits_data(config, TokenData(data_path))
    check_resumable(config, run_dir, world or config.processes)
    write_run_config(config, run_dir)
    (run_dir / FAILED).unlink(missing_ok=True)
    (run_dir / RECORD).unlink(missing_ok=True)  # so that a record found after the ranks exit is theirs
    return run_dir


def finish(run_dir: Path) -> Path:
    """Mark a run whose ranks all returned as done: its `SUCCESS` file, written last."""
    if not (Path(run_dir) / RECORD).exists():
        raise WorkersFailed(f"{run_dir} has no {RECORD}: its ranks returned without finishing")
    mark_success(run_dir)
    return Path(run_dir)


def train(config: RunConfig, data_path: Path, store: Path, progress: Progress | None = None, run_dir: Path | None = None) -> Path:
    """Train and evaluate one run (or reuse the finished one) in `run_path`'s directory, or `run_dir`; return the directory."""
    run_dir = Path(run_dir) if run_dir is not None else run_path(config, data_path, store)
    if is_complete(run_dir):
        return run_dir
    run_dir = prepare(config, data_path, store, run_dir=run_dir)
    if config.processes == 1 and config.backend == "torch":
        train_loop(config, data_path, run_dir, progress)
    else:
        _torchrun(config, data_path, run_dir, progress)
    return finish(run_dir)


def _torchrun(config: RunConfig, data_path: Path, run_dir: Path, progress: Progress | None) -> None:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.processes)))
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={config.processes}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "stages.train", str(run_dir), str(data_path),
    ]  # fmt: skip
    log_path = run_dir / WORKER_LOG
    with open(log_path, "w") as log:
        workers = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        follower = _MetricsFollower(run_dir / METRICS, config.tokens // config.batch_tokens)
        try:
            while workers.poll() is None:
                follower.report(progress)
                time.sleep(0.2)
            follower.report(progress)
        finally:
            if workers.poll() is None:
                workers.kill()
                workers.wait()
    if (run_dir / RECORD).exists():
        if workers.returncode != 0:
            _warn_teardown(log_path, workers.returncode)
        return
    if (run_dir / FAILED).exists():
        failed = json.loads((run_dir / FAILED).read_text())
        raise RunDiverged(failed["step"], failed["reason"])
    lines = log_path.read_text(errors="replace").strip().splitlines()
    errors = [match for line in lines if (match := re.match(r"^(\[rank\d+\]: )?([A-Za-z_.]*(Error|Exception)\b.*)", line))]
    from_ranks = [match.group(0) for match in errors if match.group(1)]  # a rank's own error before torchrun's summary
    cause = (from_ranks or [match.group(0) for match in errors] or lines[-1:] or ["no output"])[0]
    raise WorkersFailed(f"the {config.processes} ranks of {run_dir.name} exited with {workers.returncode}: {cause} (log: {log_path})")


def _teardown_note(log: str, returncode: int) -> str:
    """What torchrun's failure summary in `log` says of the rank that failed first, for a run that had finished."""
    found = re.search(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", log, re.DOTALL)
    if found is None:
        return f"the ranks exited with status {returncode} after the run finished; the run is complete"
    rank, code = int(found.group(1)), int(found.group(2))
    how = signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else f"status {code}"
    return f"rank {rank} exited with {how} after the run finished; the run is complete"


def _warn_teardown(log_path: Path, returncode: int) -> None:
    note = _teardown_note(log_path.read_text(errors="replace"), returncode)
    with open(log_path, "a") as log:
        log.write(f"warning: {note}\n")
    warnings.warn(note, TeardownWarning, stacklevel=4)


class _MetricsFollower:
    """Reads the lines rank 0 appends to metrics.jsonl and passes them to a progress callback."""

    def __init__(self, path: Path, total_steps: int):
        self.path = path
        self.total_steps = total_steps
        self.position = 0

    def report(self, progress: Progress | None) -> None:
        if progress is None or not self.path.exists():
            return
        with open(self.path) as handle:
            if os.fstat(handle.fileno()).st_size < self.position:
                self.position = 0  # a resumed run cut the file back to its checkpoint
            handle.seek(self.position)
            while (line := handle.readline()).endswith("\n"):
                self.position = handle.tell()
                progress(json.loads(line), self.total_steps)
