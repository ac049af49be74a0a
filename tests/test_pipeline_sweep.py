"""`dcsl sweep` end to end with real Ray, in real processes: resume after kill -9, two sweeps on one
store, a changed hyperparameter, an injected failure, and `dcsl status` / `dcsl runs` on the result."""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline.store import State, Store

HF_HOME = os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))
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


def _env() -> dict:
    env = dict(os.environ, HF_HOME=HF_HOME, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    env.pop("DCSL_INJECT_FAILURE", None)
    return env


def _write(folder: Path, store: Path, sweep: dict = SWEEP) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**sweep, "store": str(store)}))
    return path


def _sweep(config: Path, *extra: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([DCSL, "sweep", str(config), *extra], capture_output=True, text=True, env=env or _env(), timeout=timeout)


def _successes(store: Path) -> dict[str, int]:
    """SUCCESS modification times of every finished train step: a step that ran again gets a new one."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (store / "train").glob("*/SUCCESS")}


def _attempts(store: Path) -> dict[str, int]:
    """How many times each train step was started (the store's step.json counts attempts)."""
    return {p.parent.name: json.loads(p.read_text())["attempt"] for p in (store / "train" / ".steps").glob("*/step.json")}


def _law(store: Path) -> dict:
    (law,) = (store / "fit").glob("*/law.json")
    return json.loads(law.read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One uninterrupted sweep: the reference the other tests compare with."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    store = folder / "store"
    result = _sweep(_write(folder, store))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{RUNS} of {RUNS} runs succeeded" in result.stdout
    return store


def test_the_sweep_runs_end_to_end_to_a_law_and_a_report(finished):
    records = [json.loads(p.read_text()) for p in (finished / "train").glob("*/run.json")]
    assert len(records) == RUNS
    # D is epochs x U rounded down to whole steps of 1,024 tokens; epochs are D / U exactly
    assert sorted({r["tokens"] for r in records}) == [19_456, 59_392, 79_872, 239_616]
    assert {r["epochs"] for r in records} == {19_456 / 20_000, 59_392 / 60_000, 79_872 / 20_000, 239_616 / 60_000}
    assert all(r["val_loss"] < math.log(r["shape"]["vocab_size"]) for r in records)
    law = _law(finished)
    assert law["n_runs"] == RUNS and law["method"] == "repetition"
    (report,) = (finished / "report").glob("*/report.md")
    for name in ("allocation.csv", "observed_vs_predicted.png", "loss_vs_epochs.png", "allocation_frontier.png"):
        assert (report.parent / name).stat().st_size > 0
    assert "8 runs fitted" in report.read_text()


def test_rerunning_a_finished_sweep_runs_nothing(finished, tmp_path):
    before, attempts = _successes(finished), _attempts(finished)
    config = _write(tmp_path, finished)
    explained = subprocess.run([DCSL, "sweep", str(config), "--explain"], capture_output=True, text=True, env=_env())
    assert explained.returncode == 0 and explained.stdout.splitlines()[-1] == "0 of 11 steps will run"
    assert _sweep(config).returncode == 0
    assert _successes(finished) == before and _attempts(finished) == attempts


def test_kill_minus_9_mid_sweep_then_resume_gives_the_same_law(finished, tmp_path):
    store = tmp_path / "store"
    config = _write(tmp_path, store)
    kill_after = random.Random(7).randint(1, RUNS - 3)  # finished runs before the kill
    sweep = subprocess.Popen([DCSL, "sweep", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=_env(), start_new_session=True)
    deadline = time.monotonic() + 300
    while len(_successes(store)) < kill_after if (store / "train").exists() else True:
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    finished_before = _successes(store)
    assert kill_after <= len(finished_before) < RUNS
    assert not list((store / "fit").glob("*/law.json")) if (store / "fit").exists() else True

    result = _sweep(config)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _successes(store)
    assert len(after) == RUNS
    assert {name: after[name] for name in finished_before} == finished_before  # nothing finished ran again
    assert _law(store)["params"] == _law(finished)["params"]
    for name in after:
        resumed = json.loads((store / "train" / name / "run.json").read_text())
        reference = json.loads((finished / "train" / name / "run.json").read_text())
        assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)


def test_two_sweeps_at_once_run_each_step_exactly_once(finished, tmp_path):
    store = tmp_path / "store"
    config = _write(tmp_path, store)
    first, second = (subprocess.Popen([DCSL, "sweep", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=_env()) for _ in range(2))
    for sweep in (first, second):
        _, err = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, err[-3000:]
    assert set(_attempts(store).values()) == {1} and len(_attempts(store)) == RUNS
    assert _law(store)["params"] == _law(finished)["params"]


def test_a_changed_hyperparameter_reruns_only_its_runs(finished, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(finished, store, symlinks=True)
    changed = json.loads(json.dumps(SWEEP))
    changed["models"][1]["train"]["optimizer"]["lr"] = 3.0e-3
    config = _write(tmp_path, store, changed)
    explained = subprocess.run([DCSL, "sweep", str(config), "--explain"], capture_output=True, text=True, env=_env())
    lines = explained.stdout.splitlines()
    to_run = [line for line in lines if line.startswith("run ")]
    assert len(to_run) == 4 and all(line.startswith("run   train/m-") for line in to_run)
    assert all("config changed: optimizer.lr 0.002 -> 0.003" in line for line in to_run)
    before = _successes(store)
    assert _sweep(config).returncode == 0
    after = _successes(store)
    small = {name for name in before if name.startswith("s-")}
    assert {name: after[name] for name in small} == {name: before[name] for name in small}
    assert len(after) == RUNS + 4  # the old m- runs stay in the store beside the new ones


def test_an_injected_failure_is_recorded_and_the_rest_finish(finished, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(finished / "tokenize", store / "tokenize", symlinks=True)
    config = _write(tmp_path, store)
    result = _sweep(config, env={**_env(), "DCSL_INJECT_FAILURE": "m-U60K-e4-s0"})
    assert result.returncode == 3, result.stderr[-3000:]  # some runs failed: the law and a partial report all the same
    assert f"{RUNS - 1} of {RUNS} runs succeeded; 1 did not:" in result.stdout
    assert "m-U60K-e4-s0: failed: RuntimeError: injected failure" in result.stdout
    (failed,) = (store / "train" / ".steps").glob("m-U60K-e4-s0-*/FAILED")
    assert "Traceback" in json.loads(failed.read_text())["traceback"]
    (report,) = (store / "report").glob("*/report.md")
    assert "7 runs fitted; 1 failed and were left out: m-U60K-e4-s0" in report.read_text()
    assert "partial: 7 of 8 runs" in "\n".join(report.read_text().splitlines()[:3])
    assert _law(store)["n_runs"] == RUNS - 1
    status = subprocess.run([DCSL, "status", str(store)], capture_output=True, text=True, env=_env())
    assert status.returncode == 0 and "failed       train/m-U60K-e4-s0-" in status.stdout
    runs = subprocess.run([DCSL, "runs", str(store)], capture_output=True, text=True, env=_env())
    assert runs.returncode == 0 and len(runs.stdout.splitlines()) == 1 + RUNS - 1


def test_the_tiny_studys_ci_variant_runs_to_a_law_with_intervals(tmp_path):
    config = Path(__file__).parents[1] / "configs" / "tiny_ci.yaml"
    result = _sweep(config, "--store", str(tmp_path / "store"), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "13 of 13 runs succeeded" in result.stdout
    law = json.loads((tmp_path / "report" / "law.json").read_text())
    assert law["n_runs"] == 13 and law["method"] == "two-stage"
    intervals = law["intervals"]["params"]
    for name, value in law["params"].items():
        low, high = intervals[name]
        assert low <= high and math.isfinite(value), name
    records = [json.loads(p.read_text()) for p in (tmp_path / "store" / "train").glob("*/run.json")]
    assert max(r["epochs"] for r in records) == 16 and len({r["params_non_embedding"] for r in records}) == 3
    once = {(r["params_non_embedding"], r["unique_tokens"]): r["val_loss"] for r in records if r["epochs"] <= 1}
    # seen once, a bigger budget gives a lower validation loss for every model size
    for params in {p for p, _ in once}:
        losses = [once[(params, u)] for u in sorted(u for p, u in once if p == params)]
        assert losses == sorted(losses, reverse=True), (params, losses)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "bootstrap interval |" in report and f"| rd_star | {law['params']['rd_star']:.6g} | [" in report
    assert (tmp_path / "report" / "runs.csv").read_text().count("\n") == 14  # header and 13 runs
    rows = (tmp_path / "report" / "allocation.csv").read_text().splitlines()
    assert len(rows) > 1 and all((tmp_path / "report" / name).stat().st_size > 0 for name in
                                 ("observed_vs_predicted.png", "loss_vs_epochs.png", "allocation_frontier.png", "report.md"))


def test_a_run_the_cluster_cannot_hold_fails_before_any_work(tmp_path):
    store = tmp_path / "store"
    result = _sweep(_write(tmp_path, store, {**SWEEP, "resources": {"cpus": 64}}))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"error: resources.cpus: 64 asked for by run s-U20K-e1-s0, but the Ray cluster lacks it: "
                             f"its largest node has {os.cpu_count()} CPUs\n")
    assert not store.exists()


def test_a_two_rank_run_goes_through_ray_train_and_matches_one_process(finished, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(finished / "tokenize", store / "tokenize", symlinks=True)
    two_ranks = json.loads(json.dumps(SWEEP))
    two_ranks["models"] = two_ranks["models"][:1]
    two_ranks["grid"] = [{"unique_tokens": "20K", "epochs": 1}]
    two_ranks["train"]["processes"] = 2
    two_ranks["resources"] = {"cpus": 2}
    result = _sweep(_write(tmp_path, store, two_ranks))
    assert "1 of 1 runs succeeded" in result.stdout, result.stderr[-3000:]  # (one run is too few to fit a law)
    (run_dir,) = (store / "train").glob("s-U20K-e1-s0-*/")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["world_size"] == 2 and (run_dir / "ray_train").is_dir()  # trained by TorchTrainer's two workers
    reference = json.loads(next((finished / "train").glob("s-U20K-e1-s0-*/run.json")).read_text())
    assert record["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)  # DDP over 2 ranks = 1 process, same batch


def _train_workers() -> list[int]:
    """Pids of Ray worker processes running a train step (the runner names its tasks `<stage>:<node>`)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if status.read_bytes().startswith(b"ray::train:"):
                found.append(int(status.parent.name))
        except OSError:
            continue
    return found


def _start_on_a_tokenized_store(finished: Path, tmp_path: Path, until, settle: float) -> tuple[Path, Path, subprocess.Popen, list]:
    """Start `dcsl sweep` on a store holding `finished`'s corpus; return `settle` s after `until(store)` found something."""
    store = tmp_path / "store"
    shutil.copytree(finished / "tokenize", store / "tokenize", symlinks=True)
    config = _write(tmp_path, store)
    sweep = subprocess.Popen([DCSL, "sweep", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 120
    while not (found := until(store)):
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(settle)
    return store, config, sweep, found


def test_a_crashed_worker_is_retried_and_its_run_resumes(finished, tmp_path):
    store, _, sweep, workers = _start_on_a_tokenized_store(finished, tmp_path, lambda store: _train_workers(), settle=0.3)
    os.kill(workers[0], signal.SIGKILL)  # mid-run: the task has claimed its step and is training
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, err[-3000:]
    assert f"{RUNS} of {RUNS} runs succeeded" in out
    assert max(_attempts(store).values()) == 2  # the killed worker's step ran again, once
    assert _law(store)["params"] == _law(finished)["params"]


def test_ctrl_c_stops_cleanly_and_marks_nothing_done_that_is_not(finished, tmp_path):
    store, config, sweep, _ = _start_on_a_tokenized_store(
        finished, tmp_path, lambda store: list(store.glob("train/.steps/*/leases/lease.0")), settle=1.0)
    sweep.send_signal(signal.SIGINT)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "interrupted" in err
    states = [info.state for info in Store(store).list_steps("train")]
    assert State.INTERRUPTED in states and State.RUNNING not in states and State.FAILED not in states
    for info in Store(store).list_steps("train"):  # a run is done exactly when its record says it finished
        assert (info.state is State.DONE) == (info.path / "run.json").exists()
    result = _sweep(config)
    assert result.returncode == 0 and f"{RUNS} of {RUNS} runs succeeded" in result.stdout
