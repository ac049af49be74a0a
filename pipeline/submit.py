"""Submitting a sweep to SLURM: the job's options, the rendered sbatch script, the job records in the store.

`dcsl submit` renders `slurm/sweep.sbatch` into `<store>/slurm/<sweep>-<time>/` beside a copy of
the sweep file (the job runs that copy, so a requeued job runs what was submitted), submits it with
`sbatch`, and records the job in `job.json` there; `dcsl status` and `dcsl cancel` find jobs by
those records. Values that reach shell code are quoted with `shlex.quote`; values that reach
`#SBATCH` lines, which the shell never runs, are checked for what SLURM allows there and written
in double quotes when they hold spaces (sbatch strips them), and a newline is refused anywhere,
since it would start a new line of the script.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from scaling.atomic import write_text_atomic
from scaling.errors import InputError

TEMPLATE = Path(__file__).resolve().parents[1] / "slurm" / "sweep.sbatch"
JOBS = "slurm"  # <store>/slurm/<sweep>-<time>/{sweep.yaml, sweep.sbatch, job.json, slurm-<job id>.out}
JOB_RECORD = "job.json"
SIGNAL_SECONDS = 300  # USR1 this long before the time limit (a quarter of shorter limits)
TIME_FORMATS = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")
MEMORY_FORMAT = re.compile(r"^\d+[KMGT]?$")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class JobOptions:
    """What `dcsl submit` asks SLURM for."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int | None = None
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    mem: str | None = None
    extra_sbatch: str | None = None
    job_name: str = "dcsl"

    def check(self) -> None:
        """InputError naming the first option SLURM would refuse (or that could break the script)."""
        if self.nodes < 1:
            raise InputError("--nodes", f"{self.nodes} is not allowed; a job needs at least 1 node")
        if self.gpus_per_node < 0:
            raise InputError("--gpus-per-node", f"{self.gpus_per_node} is not allowed; use 0 or more")
        if self.cpus_per_node is not None and self.cpus_per_node < 1:
            raise InputError("--cpus-per-node", f"{self.cpus_per_node} is not allowed; use 1 or more")
        if self.time is not None and not TIME_FORMATS.match(self.time):
            raise InputError("--time", f"{self.time!r} is not a SLURM time limit; use MINUTES, HH:MM:SS or D-HH:MM:SS")
        if self.mem is not None and not MEMORY_FORMAT.match(self.mem):
            raise InputError("--mem", f"{self.mem!r} is not a SLURM memory size; use a number with an optional K, M, G or T suffix")
        for option, value in (("--partition", self.partition), ("--account", self.account), ("--job-name", self.job_name)):
            _check_directive_value(option, value)
        if self.extra_sbatch is not None:
            _check_directive_value("--extra-sbatch", self.extra_sbatch.replace('"', ""))  # quotes are shell syntax here
            for word in self.extra_directives():
                _check_directive_value("--extra-sbatch", word)

    def time_seconds(self) -> int | None:
        """The time limit in seconds, or None when the partition's default applies."""
        if self.time is None:
            return None
        days, _, clock = self.time.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if days:  # D-H, D-H:M, D-H:M:S
            parts += [0] * (3 - len(parts))
            return int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
        weights = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]  # M, M:S, H:M:S
        return sum(p * w for p, w in zip(parts, weights))

    def signal_seconds(self) -> int:
        """How long before the time limit the job gets USR1 (to stop, mark and requeue)."""
        limit = self.time_seconds()
        return SIGNAL_SECONDS if limit is None else max(10, min(SIGNAL_SECONDS, limit // 4))

    def extra_directives(self) -> list[str]:
        """The `--extra-sbatch` options, one per #SBATCH line; InputError for anything that is not an option."""
        if not self.extra_sbatch:
            return []
        try:
            words = shlex.split(self.extra_sbatch)
        except ValueError as err:
            raise InputError("--extra-sbatch", f"{self.extra_sbatch!r} cannot be split into options: {err}") from None
        for word in words:
            if not word.startswith("-") or word.split("=")[0] in ("--wrap", "-J", "--job-name", "-o", "--output"):
                raise InputError("--extra-sbatch", f"{word!r} is not allowed; give sbatch options like --qos=high "
                                 "(not --wrap, --job-name or --output, which dcsl sets)")
        return words

    def directives(self, log: Path) -> list[str]:
        """The script's #SBATCH lines."""
        options = [f"--job-name={self.job_name}", f"--nodes={self.nodes}", "--ntasks-per-node=1", f"--output={log}",
                   "--open-mode=append", "--requeue", f"--signal=B:USR1@{self.signal_seconds()}"]  # fmt: skip
        for flag, value in (("--cpus-per-task", self.cpus_per_node), ("--gpus-per-node", self.gpus_per_node or None),
                            ("--partition", self.partition), ("--account", self.account), ("--time", self.time),
                            ("--mem", self.mem)):  # fmt: skip
            if value is not None:
                options.append(f"{flag}={value}")
        return [f"#SBATCH {_directive_quote(option)}" for option in options + self.extra_directives()]


def _check_directive_value(option: str, value: str | None) -> None:
    """InputError unless `value` can stand in an #SBATCH line: non-empty, one line, no double quote."""
    if value is not None and (not value.strip() or any(ord(c) < 32 for c in value) or '"' in value):
        raise InputError(option, f"{value!r} is not allowed: it must be non-empty, on one line, without '\"'")


def _directive_quote(option: str) -> str:
    """An sbatch option for an #SBATCH line: `--flag="value with spaces"` when it needs quotes."""
    if not any(c.isspace() for c in option):
        return option
    flag, equals, value = option.partition("=")
    return f'{flag}="{value}"' if equals else f'"{option}"'


def render(options: JobOptions, sweep_file: Path, store: Path, log: Path, bin_dir: Path | None = None,
           study_flags: Sequence[str] = ()) -> str:
    """The job script for a sweep: the template with every placeholder filled (shell values quoted);
    `study_flags` are an active study's `dcsl sweep` flags (`ActiveStudy.flags`)."""
    options.check()
    bin_dir = bin_dir or Path(sys.executable).parent
    values = {
        "directives": "\n".join(options.directives(log)),
        "store": shlex.quote(str(store)),
        "sweep_file": shlex.quote(str(sweep_file)),
        "dcsl": shlex.quote(str(bin_dir / "dcsl")),
        "ray": shlex.quote(str(bin_dir / "ray")),
        "gpus_per_node": str(int(options.gpus_per_node)),
        "study_flags": " ".join(shlex.quote(flag) for flag in study_flags),
    }
    text = TEMPLATE.read_text()
    missing = set(PLACEHOLDER.findall(text)) ^ set(values)
    if missing:
        raise RuntimeError(f"slurm template and renderer disagree on {sorted(missing)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def prepare_job(sweep_name: str, sweep_file: Path, store: Path, options: JobOptions, bin_dir: Path | None = None,
                study_flags: Sequence[str] = ()) -> Path:
    """Write the job folder (the sweep file's copy and the script) into the store; return the script."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    folder = store.resolve() / JOBS / f"{sweep_name}-{stamp}"
    folder.mkdir(parents=True)
    copy = folder / "sweep.yaml"
    write_text_atomic(copy, Path(sweep_file).read_text())
    script = folder / "sweep.sbatch"
    write_text_atomic(script, render(options, copy, store.resolve(), folder / "slurm-%j.out", bin_dir, study_flags))
    return script


def submit(script: Path, options: JobOptions) -> str:
    """Submit the script with sbatch (from the current directory) and record the job; return its id."""
    sbatch = _tool("sbatch")
    result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise InputError("sbatch", f"{(result.stderr or result.stdout).strip().splitlines()[-1]}")
    job_id = result.stdout.strip().split(";")[0]
    record = {"job_id": job_id, "script": str(script), "log": str(script.parent / f"slurm-{job_id}.out"),
              "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"), "options": asdict(options)}  # fmt: skip
    write_text_atomic(script.parent / JOB_RECORD, json.dumps(record, indent=2) + "\n")
    return job_id


def jobs(store: Path) -> list[dict]:
    """The jobs submitted for this store, oldest first (their `job.json` records)."""
    records = []
    for path in sorted((Path(store) / JOBS).glob(f"*/{JOB_RECORD}")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being written
    return sorted(records, key=lambda record: record["submitted"])


def job_state(job_id: str) -> dict:
    """SLURM's view of a job: {"state": RUNNING/PENDING/COMPLETED/..., "restarts": n, "reason": ...}."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return {"state": "UNKNOWN", "reason": "scontrol not found"}
    result = subprocess.run([scontrol, "show", "job", "-o", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        return {"state": "UNKNOWN", "reason": "no longer known to SLURM"}
    fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
    return {"state": fields.get("JobState", "UNKNOWN"), "restarts": int(fields.get("Restarts", 0)),
            "reason": fields.get("Reason", ""), "run_time": fields.get("RunTime", "")}  # fmt: skip


ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
          "STAGE_OUT", "SIGNALING"}  # fmt: skip


def cancel(job_id: str) -> None:
    """Cancel the job (SLURM sends its batch script TERM; the sweep stops and marks its steps)."""
    result = subprocess.run([_tool("scancel"), job_id], capture_output=True, text=True)
    if result.returncode != 0:
        raise InputError("scancel", f"{(result.stderr or result.stdout).strip()}")


def partition_has_gpus(partition: str | None) -> bool | None:
    """Whether any node of the partition (default: the default one) offers GPUs; None if sinfo can't say."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return None
    args = [sinfo, "-h", "-o", "%P %G"] + (["-p", partition] if partition else [])
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    lines = [line.split(maxsplit=1) for line in result.stdout.splitlines() if line.strip()]
    if not partition:
        lines = [line for line in lines if line[0].endswith("*")]
    if not lines:
        return None
    return any("gpu" in (line[1] if len(line) > 1 else "") for line in lines)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InputError(name, "not found on PATH; dcsl submit needs a SLURM client (sbatch, scontrol, scancel)")
    return path
