"""`dcsl submit` / `dcsl cancel`: the rendered job script (quoting, shellcheck, its signal handling, run
with stand-in commands), bad options, and real jobs on a real single-node SLURM (`slurm/local_cluster.sh`,
which `.ci/run` starts): a sweep to a law, a requeue mid-sweep, a cancel."""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline.store import State, Store
from pipeline.cli.study_options import study_from_flags
from pipeline.study import active_study
from pipeline.submit import JobOptions, render

from conftest import REPO

HF_HOME = os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))
DCSL = str(Path(sys.executable).with_name("dcsl"))
CI_SWEEP = REPO / "configs" / "tiny_ci.yaml"
PAYLOADS = ["a b; touch {pwned}", "$(touch {pwned})", "`touch {pwned}`", "x' && touch {pwned} '", "x\" ; touch {pwned}"]


def _env() -> dict:
    return dict(os.environ, HF_HOME=HF_HOME, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")


def _dcsl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DCSL, *args], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=300)


# ---- the rendered script, with stand-in commands -------------------------------------------------

STUB = """#!/bin/bash
# stand-in for {name}: its TERM handler first (a test that sees the call logged may signal it at once), then log
# the call as one line (fields split by \\x1f, one write), then behave as the script expects
case "{name}" in
  dcsl) trap 'echo dcsl-got-TERM >> "{log}"; exit 130' TERM ;;
  ray|srun) trap 'exit 0' TERM ;;
esac
line=$(printf '%s\\x1f' "{name}" "$@")
printf '%s\\n' "$line" >> "{log}"
case "{name}" in
  ray|srun) while true; do sleep 0.1; done ;;
  dcsl) for call in {wait_for}; do  # until those calls are logged
          for _ in $(seq 200); do grep -q "^$call" "{log}" && break; sleep 0.1; done
        done
        for _ in $(seq {dcsl_seconds}0); do sleep 0.1; done ;;
esac
"""


def _stubs(folder: Path, dcsl_seconds: int = 0, wait_for: str = "ray") -> Path:
    """A bin folder with dcsl, ray, srun and scontrol stand-ins that log their arguments to `calls.log`.

    The dcsl stand-in first waits (up to 20 s each) for the `wait_for` stand-ins to have logged their calls:
    background commands started before the driver get to run, however loaded the machine.
    """
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name in ("dcsl", "ray", "srun", "scontrol"):
        path = bin_dir / name
        path.write_text(STUB.format(name=name, log=folder / "calls.log", dcsl_seconds=dcsl_seconds, wait_for=wait_for))
        path.chmod(0o755)
    return bin_dir


def _calls(folder: Path) -> list[list[str]]:
    """Each logged call: [command, arg, arg, ...]."""
    text = (folder / "calls.log").read_text() if (folder / "calls.log").exists() else ""
    return [line.split("\x1f")[:-1] for line in text.splitlines() if "\x1f" in line]


def _run_script(script: Path, folder: Path, bin_dir: Path, nodes: int = 1, wait: bool = True) -> subprocess.Popen:
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES=str(nodes),
               SLURM_CPUS_ON_NODE="3", DCSL_RAY_HEAD_IP="10.1.2.3")  # fmt: skip
    process = subprocess.Popen(["bash", str(script)], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        process.wait(timeout=60)
    return process


def _render(folder: Path, options: JobOptions, name: str = "store") -> tuple[Path, Path, Path]:
    store = folder / name
    sweep_file = folder / f"{name} sweep.yaml"
    bin_dir = _stubs(folder, wait_for="ray srun" if options.nodes > 1 else "ray")
    script = folder / "job.sbatch"
    script.write_text(render(options, sweep_file, store, folder / "slurm-%j.out", bin_dir))
    return script, store, bin_dir


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_string_option_is_quoted_so_nothing_is_injected(tmp_path, payload):
    pwned = tmp_path / "PWNED"
    value = payload.format(pwned=pwned)
    if '"' in value:  # a double quote can't be written into an #SBATCH value: refused, one line
        with pytest.raises(Exception, match="without '\"'"):
            JobOptions(partition=value).check()
        options = JobOptions()
    else:
        options = JobOptions(partition=value, account=value, extra_sbatch=f"--comment={shlex.quote(value)}")
    script, store, bin_dir = _render(tmp_path, options, name=value.replace("/", "_"))
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    process = _run_script(script, tmp_path, bin_dir)
    assert process.returncode == 0, process.stdout.read()
    assert not pwned.exists()
    (dcsl,) = [call for call in _calls(tmp_path) if call[0] == "dcsl"]
    assert dcsl[1:] == ["sweep", str(tmp_path / f"{store.name} sweep.yaml"), "--store", str(store), "--address", "10.1.2.3:24242",
                        "--wait-nodes", "1"]  # fmt: skip
    if '"' not in value:
        assert f'#SBATCH --partition="{value}"' in script.read_text() or f"#SBATCH --partition={value}" in script.read_text()


def test_an_active_studys_flags_reach_the_jobs_sweep(tmp_path):
    study = active_study(2, 1e12, 1e22, 30e3, round_runs=3)
    bin_dir = _stubs(tmp_path, wait_for="ray")
    script = tmp_path / "job.sbatch"
    script.write_text(render(JobOptions(), tmp_path / "sweep.yaml", tmp_path / "store", tmp_path / "log", bin_dir, study.flags()))
    process = _run_script(script, tmp_path, bin_dir)
    assert process.returncode == 0, process.stdout.read()
    (dcsl,) = [call for call in _calls(tmp_path) if call[0] == "dcsl"]
    assert dcsl[5:17] == ["--rounds", "2", "--round-budget", "1000000000000", "--target-flops", "1e+22",
                          "--target-unique-tokens", "30000", "--round-runs", "3", "--max-epochs", "16"]
    rounds, budget, flops, unique, runs, epochs = dcsl[6:17:2]
    assert study_from_flags(int(rounds), budget, flops, unique, int(runs), int(epochs)) == study  # read back the same


def test_submit_checks_the_study_flags_before_anything(tmp_path):
    result = _dcsl("submit", str(CI_SWEEP), "--store", str(tmp_path / "store"), "--rounds", "2", "--target-flops", "1e15",
                   "--dry-run")  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: --round-budget: missing; --rounds 2 needs --round-budget B and --target-flops C\n"
    assert not (tmp_path / "store").exists()


IN_CI = os.environ.get("CI") == "true"  # CI installs shellcheck and starts SLURM: there, missing ones fail


@pytest.mark.skipif(shutil.which("shellcheck") is None and not IN_CI, reason="shellcheck is not installed (.ci/run installs it)")
@pytest.mark.parametrize("options", [JobOptions(nodes=3, gpus_per_node=4, cpus_per_node=16), JobOptions(time="1:00:00"),
                                     *(JobOptions(partition=p.format(pwned="/tmp/x"), account=p.format(pwned="/tmp/x"))
                                       for p in PAYLOADS if '"' not in p)], ids=lambda o: str(o.nodes) + (o.partition or ""))
def test_rendered_scripts_pass_shellcheck(tmp_path, options):
    script, _, _ = _render(tmp_path, options)
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_script_starts_a_head_workers_on_other_nodes_and_the_driver(tmp_path):
    script, store, bin_dir = _render(tmp_path, JobOptions(nodes=3, gpus_per_node=4, cpus_per_node=16))
    text = script.read_text()
    for line in ("#SBATCH --nodes=3", "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=16", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --ntasks-per-node=1"):  # fmt: skip
        assert line in text.splitlines(), line
    assert _run_script(script, tmp_path, bin_dir, nodes=3).returncode == 0
    calls = {call[0]: call[1:] for call in _calls(tmp_path)}
    host = socket.gethostname()
    assert calls["ray"][:2] == ["start", "--head"] and "--port=24242" in calls["ray"] and "--num-gpus=4" in calls["ray"]
    assert "--num-cpus=3" in calls["ray"] and "--temp-dir=/tmp/ray-4242" in calls["ray"]  # SLURM_CPUS_ON_NODE
    assert calls["srun"][:4] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", f"--exclude={host}"]
    assert calls["srun"][4:8] == [str(bin_dir / "ray"), "start", "--block", "--address=10.1.2.3:24242"]
    assert calls["dcsl"][-2:] == ["--wait-nodes", "3"]


def test_usr1_before_the_time_limit_stops_the_driver_and_requeues(tmp_path):
    store = tmp_path / "store"
    bin_dir = _stubs(tmp_path, dcsl_seconds=30)
    script = tmp_path / "job.sbatch"
    script.write_text(render(JobOptions(time="1:00:00"), tmp_path / "sweep.yaml", store, tmp_path / "log", bin_dir))
    assert "#SBATCH --signal=B:USR1@300" in script.read_text()
    process = _run_script(script, tmp_path, bin_dir, wait=False)
    deadline = time.monotonic() + 20
    while not any(call[0] == "dcsl" for call in _calls(tmp_path)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGUSR1)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 130, output  # the driver's status: interrupted
    assert "USR1 received" in output and "requeueing job 4242" in output
    assert "dcsl-got-TERM" in (tmp_path / "calls.log").read_text()
    assert ["scontrol", "requeue", "4242"] in _calls(tmp_path)


def test_signal_time_is_a_quarter_of_short_limits():
    assert JobOptions(time="20").signal_seconds() == 300
    assert JobOptions(time="8").signal_seconds() == 120
    assert JobOptions(time="1-00:00").signal_seconds() == 300
    assert JobOptions(time="0:30").signal_seconds() == 10


BAD_OPTIONS = [
    (["--nodes", "0"], "error: --nodes: 0 is not allowed; a job needs at least 1 node"),
    (["--gpus-per-node", "-1"], "error: --gpus-per-node: -1 is not allowed; use 0 or more"),
    (["--time", "1h"], "error: --time: '1h' is not a SLURM time limit; use MINUTES, HH:MM:SS or D-HH:MM:SS"),
    (["--time", "10; reboot"], "error: --time: '10; reboot' is not a SLURM time limit; use MINUTES, HH:MM:SS or D-HH:MM:SS"),
    (["--mem", "lots"], "error: --mem: 'lots' is not a SLURM memory size; use a number with an optional K, M, G or T suffix"),
    (["--partition", "gpu\nrm -rf /"], "error: --partition: 'gpu\\nrm -rf /' is not allowed: it must be non-empty, on one line, "
     "without '\"'"),
    (["--extra-sbatch", "--wrap='rm -rf /'"], "error: --extra-sbatch: '--wrap=rm -rf /' is not allowed; give sbatch options like "
     "--qos=high (not --wrap, --job-name or --output, which dcsl sets)"),
    (["--extra-sbatch", "--qos='high"], "error: --extra-sbatch: \"--qos='high\" cannot be split into options: No closing quotation"),
    (["--cpus-per-node", "1"], "error: resources.cpus: 2 asked for by run xs-U10K-e1-s0, but the job (--nodes, --gpus-per-node, "
     "--cpus-per-node) lacks it: its largest node has 1 CPUs"),
]  # fmt: skip


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[o[0] for o, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, options, message):
    sweep = yaml.safe_load(CI_SWEEP.read_text())
    sweep["resources"] = {"cpus": 2}
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    result = _dcsl("submit", str(sweep_file), "--store", str(tmp_path / "store"), *options)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == message + "\n"
    assert not (tmp_path / "store").exists()


def test_dry_run_prints_the_script_and_submits_nothing(tmp_path):
    result = _dcsl("submit", str(CI_SWEEP), "--store", str(tmp_path / "store"), "--nodes", "2", "--gpus-per-node", "0",
                   "--time", "2:00:00", "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/bash") and "#SBATCH --nodes=2" in result.stdout and "#SBATCH --time=2:00:00" in result.stdout
    assert not (tmp_path / "store").exists()


# ---- a real single-node SLURM ---------------------------------------------------------------------


def _slurm_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and any(state.strip() in ("idle", "mix", "alloc") for state in result.stdout.splitlines())


slurm = pytest.mark.skipif(not _slurm_up() and not IN_CI, reason="no SLURM daemons here (.ci/run starts them with slurm/local_cluster.sh)")


@pytest.mark.skipif(not IN_CI, reason="outside CI a machine may have no SLURM")
def test_ci_has_a_running_slurm():
    assert _slurm_up(), "CI=true but no SLURM daemon answers sinfo: .ci/run must start slurm/local_cluster.sh"


def _submit(store: Path, *extra: str, sweep: Path = CI_SWEEP) -> str:
    result = _dcsl("submit", str(sweep), "--store", str(store), "--cpus-per-node", str(os.cpu_count()), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[2].rstrip(":")  # "submitted job <id>: ..."


def _state(job: str) -> str:
    result = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True)
    fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
    return fields.get("JobState", "GONE")


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _finished(store: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (store / "train").glob("*/SUCCESS")}


def _law(store: Path) -> dict:
    (law,) = (store / "fit").glob("*/law.json")
    return json.loads(law.read_text())


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> Path:
    """The CI study submitted with `dcsl submit` and run to the end by SLURM."""
    store = tmp_path_factory.mktemp("slurm") / "store"
    job = _submit(store, "--time", "20")
    _wait_for(lambda: _state(job) not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"), 600, f"job {job}")
    log = next((store / "slurm").glob(f"*/slurm-{job}.out"))
    assert _state(job) in ("COMPLETED", "GONE"), log.read_text()[-3000:]
    return store


@slurm
def test_a_submitted_sweep_fits_its_law_from_the_store(submitted):
    law = _law(submitted)
    assert law["n_runs"] == 13 and law["method"] == "two-stage"
    assert len(_finished(submitted)) == 13
    (job,) = [json.loads(p.read_text()) for p in (submitted / "slurm").glob("*/job.json")]
    assert "13 of 13 runs succeeded" in Path(job["log"]).read_text()
    status = _dcsl("status", str(submitted))
    assert status.returncode == 0 and f"slurm job {job['job_id']}: COMPLETED" in status.stdout


@slurm
def test_a_requeue_mid_sweep_resumes_without_rerunning_finished_steps(submitted, tmp_path):
    store, sweep = tmp_path / "store", tmp_path / "sweep.yaml"
    shutil.copyfile(CI_SWEEP, sweep)
    job = _submit(store, sweep=sweep)
    sweep.write_text("not: [a sweep\n")  # the job, and its requeued start, run the copy made at submission
    _wait_for(lambda: len(_finished(store)) >= 3, 300, "three finished runs")
    before = _finished(store)
    assert subprocess.run(["scontrol", "requeue", job]).returncode == 0
    # SLURM holds a requeued job for two minutes (BeginTime); release it once it is pending again
    _wait_for(lambda: _state(job) == "PENDING", 120, "the requeued job to be pending")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    _wait_for(lambda: _state(job) not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"), 600, f"job {job} to end")
    log = next((store / "slurm").glob(f"*/slurm-{job}.out")).read_text()
    assert "start 2" in log and "TERM received" in log, log[-3000:]
    after = _finished(store)
    assert len(after) == 13 and {name: after[name] for name in before} == before  # nothing finished ran again
    assert _law(store)["params"] == _law(submitted)["params"]


@slurm
def test_cancel_ends_the_job_and_leaves_no_step_running(tmp_path):
    store = tmp_path / "store"
    job = _submit(store)
    _wait_for(lambda: any(info.state is State.RUNNING for info in Store(store).list_steps("train")) if (store / "train").exists()
              else False, 300, "a running train step")  # fmt: skip
    result = _dcsl("cancel", str(store))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"job {job}: CANCELLED")
    states = {info.name: info.state for info in Store(store).list_steps("train")}
    assert State.RUNNING not in states.values() and State.FAILED not in states.values()
    assert State.INTERRUPTED in states.values()
    again = _dcsl("cancel", str(store))
    assert again.returncode == 2 and "has no active SLURM job" in again.stderr


@slurm
def test_gpus_on_a_cpu_partition_are_refused(tmp_path):
    result = _dcsl("submit", str(CI_SWEEP), "--store", str(tmp_path / "store"), "--gpus-per-node", "1", "--partition", "debug")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: --gpus-per-node: 1, but partition 'debug' has no GPUs (sinfo lists no gpu gres)\n"
    assert not (tmp_path / "store").exists()
