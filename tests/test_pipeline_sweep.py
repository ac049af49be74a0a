"""`dcsl sweep` end to end with real Ray, in real processes: resume after kill -9, two sweeps on one
store, a changed hyperparameter, an injected failure, a crashed worker, Ctrl-C, and `dcsl status` /
`dcsl runs` on the result. Tests wait for states of the store, never for fixed times."""

import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

import sweeps
from pipeline.lease import current_lease
from pipeline.store import INTERRUPTED, State, Store
from sweeps import DCSL, RUNS, SWEEP

LONG_RUNS = "*-U60K-e4-s0-*"  # 234 steps: one found training from a checkpoint is far from its end
PLOTS = ("observed_vs_predicted.png", "loss_vs_epochs.png", "allocation_frontier.png")


def _check_report(folder: Path, runs: int) -> None:
    """The report's plots decode to non-empty images; report.md gives the run count and every parameter of its law."""
    for name in PLOTS:
        image = imread(folder / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
    text = (folder / "report.md").read_text()
    assert f"{runs} runs fitted" in text
    law = json.loads((folder / "law.json").read_text())
    for name, value in law["params"].items():
        assert f"| {name} | {value:.6g} |" in text, name
    # the law's own checks: what sits on a bound, and how well it extrapolates to the most compute
    assert f"Parameters on a bound of the fit's search box: {', '.join(law['at_bounds']) or 'none'}." in text
    if law.get("intervals"):
        edges = [f"{name} ({side})" for name, ends in law["intervals"]["params"].items()
                 for side, end, bound in zip(("lower", "upper"), ends, law["bounds"][name]) if abs(end / bound - 1) < 1e-6]
        assert ("Bootstrap intervals that reach a bound of the search box: "
                + (f"{', '.join(edges)}; the runs do not pin these." if edges else "none.")) in text
    check = law["diagnostics"]["extrapolation"]
    expected = (f"Leave-out check skipped: {check['skipped']}." if "skipped" in check
                else f"{check['n_held_out']} others predicted with mean absolute relative error {check['mean_abs_relative_error']:.2%}")
    assert expected in text
    assert (folder / "runs.csv").read_text().count("\n") == runs + 1  # a header and one row per run


def test_the_sweep_runs_end_to_end_to_a_law_and_a_report(finished):
    records = [json.loads(p.read_text()) for p in (finished / "train").glob("*/run.json")]
    assert len(records) == RUNS
    # D is epochs x U rounded down to whole steps of 1,024 tokens; epochs are D / U exactly
    assert sorted({r["tokens"] for r in records}) == [19_456, 59_392, 79_872, 239_616]
    assert {r["epochs"] for r in records} == {19_456 / 20_000, 59_392 / 60_000, 79_872 / 20_000, 239_616 / 60_000}
    assert all(r["val_loss"] < math.log(r["shape"]["vocab_size"]) for r in records)
    law = sweeps.law(finished)
    assert law["n_runs"] == RUNS and law["method"] == "repetition"
    (report,) = (finished / "report").glob("*/report.md")
    assert len((report.parent / "allocation.csv").read_text().splitlines()) > 1
    _check_report(report.parent, RUNS)


def test_rerunning_a_finished_sweep_runs_nothing(finished, tmp_path):
    before, attempts = sweeps.successes(finished), sweeps.attempts(finished)
    config = sweeps.write(tmp_path, finished)
    explained = subprocess.run([DCSL, "sweep", str(config), "--explain"], capture_output=True, text=True, env=sweeps.env())
    assert explained.returncode == 0 and explained.stdout.splitlines()[-1] == "0 of 11 steps will run"
    assert sweeps.run(config).returncode == 0
    assert sweeps.successes(finished) == before and sweeps.attempts(finished) == attempts


def test_kill_minus_9_mid_sweep_then_resume_gives_the_same_law(finished, tmp_path):
    store = tmp_path / "store"
    config = sweeps.write(tmp_path, store)
    kill_after = random.Random(7).randint(1, RUNS - 3)  # finished runs before the kill
    sweep = sweeps.start(config, start_new_session=True)
    sweeps.wait_for(lambda: len(sweeps.successes(store)) >= kill_after, sweep)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    finished_before = sweeps.successes(store)
    assert kill_after <= len(finished_before) < RUNS
    assert not list((store / "fit").glob("*/law.json")) if (store / "fit").exists() else True

    result = sweeps.run(config)
    assert result.returncode == 0, result.stderr[-3000:]
    after = sweeps.successes(store)
    assert len(after) == RUNS
    assert {name: after[name] for name in finished_before} == finished_before  # nothing finished ran again
    assert sweeps.law(store)["params"] == sweeps.law(finished)["params"]
    for name in after:
        resumed = json.loads((store / "train" / name / "run.json").read_text())
        reference = json.loads((finished / "train" / name / "run.json").read_text())
        assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)


def test_two_sweeps_at_once_run_each_step_exactly_once(finished, tmp_path):
    store = tmp_path / "store"
    config = sweeps.write(tmp_path, store)
    first, second = (sweeps.start(config, stderr=subprocess.PIPE, text=True) for _ in range(2))
    sweeps.wait_for(lambda: sweeps.successes(store), first)
    assert second.poll() is None  # both ran when the first run finished: they shared the work
    for sweep in (first, second):
        _, err = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, err[-3000:]
    assert set(sweeps.attempts(store).values()) == {1} and len(sweeps.attempts(store)) == RUNS
    assert sweeps.law(store)["params"] == sweeps.law(finished)["params"]


def test_a_changed_hyperparameter_reruns_only_its_runs(finished, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(finished, store, symlinks=True)
    changed = json.loads(json.dumps(SWEEP))
    changed["models"][1]["train"]["optimizer"]["lr"] = 3.0e-3
    config = sweeps.write(tmp_path, store, changed)
    explained = subprocess.run([DCSL, "sweep", str(config), "--explain"], capture_output=True, text=True, env=sweeps.env())
    lines = explained.stdout.splitlines()
    to_run = [line for line in lines if line.startswith("run ")]
    assert len(to_run) == 4 and all(line.startswith("run   train/m-") for line in to_run)
    assert all("config changed: optimizer.lr 0.002 -> 0.003" in line for line in to_run)
    before = sweeps.successes(store)
    assert sweeps.run(config).returncode == 0
    after = sweeps.successes(store)
    small = {name for name in before if name.startswith("s-")}
    assert {name: after[name] for name in small} == {name: before[name] for name in small}
    assert len(after) == RUNS + 4  # the old m- runs stay in the store beside the new ones


def test_an_injected_failure_is_recorded_and_the_rest_finish(finished, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(finished / "tokenize", store / "tokenize", symlinks=True)
    config = sweeps.write(tmp_path, store)
    result = sweeps.run(config, environment={**sweeps.env(), "DCSL_INJECT_FAILURE": "m-U60K-e4-s0"})
    assert result.returncode == 3, result.stderr[-3000:]  # some runs failed: the law and a partial report all the same
    assert f"{RUNS - 1} of {RUNS} runs succeeded; 1 did not:" in result.stdout
    assert "m-U60K-e4-s0: failed: RuntimeError: injected failure" in result.stdout
    (failed,) = (store / "train" / ".steps").glob("m-U60K-e4-s0-*/FAILED")
    assert "Traceback" in json.loads(failed.read_text())["traceback"]
    (report,) = (store / "report").glob("*/report.md")
    assert "7 runs fitted; 1 failed and were left out: m-U60K-e4-s0" in report.read_text()
    assert "partial: 7 of 8 runs" in "\n".join(report.read_text().splitlines()[:3])
    assert sweeps.law(store)["n_runs"] == RUNS - 1
    status = subprocess.run([DCSL, "status", str(store)], capture_output=True, text=True, env=sweeps.env())
    assert status.returncode == 0 and "failed       train/m-U60K-e4-s0-" in status.stdout
    runs = subprocess.run([DCSL, "runs", str(store)], capture_output=True, text=True, env=sweeps.env())
    assert runs.returncode == 0 and len(runs.stdout.splitlines()) == 1 + RUNS - 1


def test_the_tiny_studys_ci_variant_runs_to_a_law_with_intervals(tmp_path):
    config = Path(__file__).parents[1] / "configs" / "tiny_ci.yaml"
    result = sweeps.run(config, "--store", str(tmp_path / "store"), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "13 of 13 runs succeeded" in result.stdout
    law = json.loads((tmp_path / "report" / "law.json").read_text())
    assert law["n_runs"] == 13 and law["method"] == "two-stage"
    intervals = law["intervals"]["params"]
    for name, value in law["params"].items():
        low, high = intervals[name]
        assert math.isfinite(value) and low <= high, name
        if name not in law["fixed"]:
            assert low <= value <= high and high > low, (name, value, low, high)  # a fitted value lies inside its interval
    records = [json.loads(p.read_text()) for p in (tmp_path / "store" / "train").glob("*/run.json")]
    assert max(r["epochs"] for r in records) == 16 and len({r["params_non_embedding"] for r in records}) == 3
    once = {(r["params_non_embedding"], r["unique_tokens"]): r["val_loss"] for r in records if r["epochs"] <= 1}
    # seen once, a bigger budget gives a lower validation loss for every model size
    for params in {p for p, _ in once}:
        losses = [once[(params, u)] for u in sorted(u for p, u in once if p == params)]
        assert losses == sorted(losses, reverse=True), (params, losses)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "bootstrap interval |" in report and f"| rd_star | {law['params']['rd_star']:.6g} | [" in report
    assert len((tmp_path / "report" / "allocation.csv").read_text().splitlines()) > 1
    _check_report(tmp_path / "report", 13)


def test_a_run_the_cluster_cannot_hold_fails_before_any_work(tmp_path):
    from ray._private.utils import get_num_cpus

    store = tmp_path / "store"
    result = sweeps.run(sweeps.write(tmp_path, store, {**SWEEP, "resources": {"cpus": 64}}))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"error: resources.cpus: 64 asked for by run s-U20K-e1-s0, but the Ray cluster lacks it: "
                             f"its largest node has {get_num_cpus()} CPUs\n")  # what Ray finds: the container's CPU quota
    assert not store.exists()


def test_a_two_rank_run_goes_through_ray_train_and_matches_one_process(finished, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(finished / "tokenize", store / "tokenize", symlinks=True)
    two_ranks = json.loads(json.dumps(SWEEP))
    two_ranks["models"] = two_ranks["models"][:1]
    two_ranks["grid"] = [{"unique_tokens": "20K", "epochs": 1}]
    two_ranks["train"]["processes"] = 2
    two_ranks["resources"] = {"cpus": 2}
    result = sweeps.run(sweeps.write(tmp_path, store, two_ranks))
    assert "1 of 1 runs succeeded" in result.stdout, result.stderr[-3000:]  # (one run is too few to fit a law)
    (run_dir,) = (store / "train").glob("s-U20K-e1-s0-*/")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["world_size"] == 2 and len(list((run_dir / "ray_train").glob("rank-*.json"))) == 2  # TorchTrainer's two workers
    reference = sweeps.records(finished)[run_dir.name]
    assert record["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)  # DDP over 2 ranks = 1 process, same batch


def _long_run_past_a_checkpoint(store: Path) -> tuple[str, int] | None:
    """A long run that is training and has a checkpoint: its directory name and the pid holding its lease."""
    for records in sorted(store.glob(f"train/.steps/{LONG_RUNS}/")):
        lease = current_lease(records / "leases", socket.gethostname(), 60.0)
        if lease is not None and lease.live and list((store / "train" / records.name).glob("checkpoints/step-*/state.json")):
            return records.name, lease.pid
    return None


def _start_on_a_tokenized_store(finished: Path, tmp_path: Path, session: Path, until) -> tuple[Path, Path, subprocess.Popen, object]:
    """Start `dcsl sweep` (its Ray session under `session`) on a store holding `finished`'s corpus; return once
    `until(store)` found something: the store, the sweep file, the sweep's process and what was found."""
    store = tmp_path / "store"
    shutil.copytree(finished / "tokenize", store / "tokenize", symlinks=True)
    config = sweeps.write(tmp_path, store)
    sweep = sweeps.start(config, sweeps.env(session), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return store, config, sweep, sweeps.wait_for(lambda: until(store), sweep)


def _check_resumed(store: Path, finished: Path, name: str) -> None:
    """The run resumed from a checkpoint and ended where the uninterrupted run did."""
    resumed, reference = sweeps.records(store)[name], sweeps.records(finished)[name]
    assert resumed["resumed_at"] and resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)


def test_a_crashed_worker_is_retried_and_its_run_resumes_from_its_checkpoint(finished, tmp_path, ray_tmp):
    store, _, sweep, (name, pid) = _start_on_a_tokenized_store(finished, tmp_path, ray_tmp, _long_run_past_a_checkpoint)
    assert pid in sweeps.session_processes(ray_tmp)  # the run's worker, of this sweep's own Ray session
    os.kill(pid, signal.SIGKILL)
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, err[-3000:]
    assert f"{RUNS} of {RUNS} runs succeeded" in out
    assert sweeps.attempts(store)[name] == 2 and max(sweeps.attempts(store).values()) == 2  # it ran again, once
    _check_resumed(store, finished, name)
    assert sweeps.law(store)["params"] == sweeps.law(finished)["params"]


def test_ctrl_c_marks_every_running_step_interrupted_and_the_rerun_resumes_them(finished, tmp_path, ray_tmp):
    store, config, sweep, (name, _) = _start_on_a_tokenized_store(finished, tmp_path, ray_tmp, _long_run_past_a_checkpoint)
    os.kill(sweep.pid, signal.SIGINT)  # the driver alone, not its process group
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "interrupted" in err, err[-3000:]
    steps = Store(store).list_steps("train")
    assert {info.state for info in steps} <= {State.DONE, State.INTERRUPTED} and State.INTERRUPTED in {info.state for info in steps}
    for info in steps:  # a run is done exactly when its record says it finished; every other started one has its marker
        assert (info.state is State.DONE) == (info.path / "run.json").exists()
        assert (info.state is State.DONE) != (store / "train" / ".steps" / info.path.name / INTERRUPTED).exists()
    result = sweeps.run(config)
    assert result.returncode == 0 and f"{RUNS} of {RUNS} runs succeeded" in result.stdout
    _check_resumed(store, finished, name)
