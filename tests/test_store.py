"""The store: step hashes, states and markers, leases raced by real processes, `explain`, and stores written by earlier code."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import socket
import time
from pathlib import Path

import pytest

from pipeline.store import Decision, Step, State, Store
from scaling import dcsl_version
from stages.artifacts import SUCCESS, atomic_directory

SPAWN = multiprocessing.get_context("spawn")
OTHER_HOST = "node-elsewhere"


def _steps(count: int) -> list[Step]:
    return [Step("train", f"run{i}", {"model": {"width": 8 * (i + 1)}, "seed": i}) for i in range(count)]


def _write_line(path: Path) -> None:
    with open(path, "a") as handle:
        handle.write(f"{os.getpid()}\n")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(path: Path, seconds: float = 20.0) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- processes started by the tests (module level, so `spawn` can import them) -------------------------


def _race(root: str, count: int, counts: str, barrier, seed: int, mode: str) -> None:
    store = Store(root, lease_timeout=30.0)
    steps = _steps(count)
    random.Random(seed).shuffle(steps)
    barrier.wait()
    for step in steps:

        def work(step=step) -> None:
            _write_line(Path(counts) / step.name)
            time.sleep(0.01)

        if mode == "run":
            assert store.run(step, work, poll=0.02) is State.DONE
        else:
            with store.claim(step) as lease:
                if lease is not None:
                    work()


def _hold(root: str, step: Step, host: str, timeout: float, started: str, release: str) -> None:
    """Claim the step, say so in `started`, and hold it (heartbeats on) until `release` exists."""
    store = Store(root, host=host, lease_timeout=timeout, heartbeat_interval=0.05)
    with store.claim(step) as lease:
        assert lease is not None
        store.step_dir(step).mkdir(parents=True, exist_ok=True)
        (store.step_dir(step) / "checkpoint-10.pt").write_text("weights")
        Path(started).write_text(str(os.getpid()))
        _wait_for(Path(release), seconds=300.0)


def _contend(root: str, step: Step, timeout: float, winners: str, barrier) -> None:
    store = Store(root, lease_timeout=timeout)
    barrier.wait()
    with store.claim(step) as lease:
        if lease is not None:
            _write_line(Path(winners) / "won")
            assert (store.step_dir(step) / "checkpoint-10.pt").read_text() == "weights"  # resumes, not restarts
            time.sleep(0.3)


def _fail_later(root: str, step: Step, started: str, go: str) -> None:
    store = Store(root)

    def work() -> None:
        Path(started).write_text("")
        _wait_for(Path(go))
        time.sleep(0.2)
        raise RuntimeError("out of memory")

    store.run(step, work)


def _start(target, *args):
    process = SPAWN.Process(target=target, args=args)
    process.start()
    return process


def _join_all(processes, seconds: float = 25.0) -> None:
    for process in processes:
        process.join(seconds)
        assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"


# -- steps ---------------------------------------------------------------------------------------------


def test_step_hash_covers_config_and_inputs_and_names_the_output_dir(tmp_path):
    a = Step("train", "run1", {"lr": 1e-3, "model": {"width": 64, "depth": 2}})
    same = Step("train", "run1", {"model": {"depth": 2, "width": 64}, "lr": 0.001})
    assert a.hash == same.hash and len(a.hash) == 16 and a == same and len({a, same}) == 1
    assert Step("train", "run1", {"lr": 2e-3, "model": {"width": 64, "depth": 2}}).hash != a.hash
    corpus = Step("tokenize", "corpus", {"vocab": 512})
    fed = Step("train", "run1", a.config, [corpus])
    assert fed.inputs == (f"tokenize/corpus-{corpus.hash}",) and fed.hash != a.hash
    assert Step("train", "run1", a.config, [Step("tokenize", "corpus", {"vocab": 1024})]).hash != fed.hash
    assert Step("train", "run1", a.config, digest="0123456789abcdef").hash == "0123456789abcdef"
    store = Store(tmp_path)
    assert store.step_dir(fed) == tmp_path / "train" / f"run1-{fed.hash}"
    assert fed.id == f"train/run1-{fed.hash}"
    assert store.state(fed) is State.NEW and not store.step_dir(fed).exists()
    for bad in ({"stage": "tr/ain"}, {"name": ""}, {"name": "-x"}, {"digest": "XYZ"}):
        with pytest.raises(ValueError):
            Step(**{"stage": "train", "name": "run", "config": {}, **bad})


# -- concurrency ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["claim", "run"])
def test_processes_racing_on_one_store_run_each_step_exactly_once(tmp_path, mode):
    count, workers = 10, 3
    counts = tmp_path / "counts"
    counts.mkdir()
    barrier = SPAWN.Barrier(workers)
    processes = [_start(_race, str(tmp_path / "store"), count, str(counts), barrier, seed, mode) for seed in range(workers)]
    _join_all(processes)
    store = Store(tmp_path / "store")
    steps = _steps(count)
    assert {step.name: len(_lines(counts / step.name)) for step in steps} == {step.name: 1 for step in steps}
    assert [store.state(step) for step in steps] == [State.DONE] * count
    assert all(store.record(step)["attempt"] == 1 for step in steps)
    assert [info.state for info in store.list_steps("train")] == [State.DONE] * count


def test_lease_of_a_killed_process_on_this_host_is_taken_over_at_once_by_exactly_one(tmp_path):
    root, step = tmp_path / "store", _steps(1)[0]
    holder = _start(_hold, str(root), step, socket.gethostname(), 60.0, str(tmp_path / "started"), str(tmp_path / "never"))
    _wait_for(tmp_path / "started")
    store = Store(root, lease_timeout=60.0)
    assert store.state(step) is State.RUNNING
    holder.kill()  # SIGKILL: nothing gets to write a marker
    holder.join()
    assert store.state(step) is State.INTERRUPTED  # heartbeat fresh, but its process is gone
    assert store.explain(step).reason == "interrupted: resumes from checkpoint"
    (tmp_path / "winners").mkdir()
    barrier = SPAWN.Barrier(3)
    _join_all([_start(_contend, str(root), step, 60.0, str(tmp_path / "winners"), barrier) for _ in range(3)])
    assert len(_lines(tmp_path / "winners" / "won")) == 1
    assert store.state(step) is State.DONE and store.record(step)["attempt"] == 2


def test_lease_from_another_host_is_taken_over_only_when_its_heartbeat_is_old(tmp_path):
    root, step, timeout = tmp_path / "store", _steps(1)[0], 3.0
    holder = _start(_hold, str(root), step, OTHER_HOST, timeout, str(tmp_path / "started"), str(tmp_path / "never"))
    _wait_for(tmp_path / "started")
    holder.kill()
    holder.join()
    store = Store(root, lease_timeout=timeout)
    lease = store.holder(step)
    assert (lease.host, lease.pid) == (OTHER_HOST, holder.pid)
    assert time.time() - lease.heartbeat < timeout / 2
    assert store.state(step) is State.RUNNING  # another host's pid can't be checked: wait for the heartbeat
    assert store.explain(step).reason == f"running elsewhere ({OTHER_HOST}, pid {holder.pid})"
    with store.claim(step) as claimed:
        assert claimed is None
    while time.time() - lease.heartbeat <= timeout + 0.05:
        time.sleep(0.05)
    assert store.state(step) is State.INTERRUPTED
    (tmp_path / "winners").mkdir()
    barrier = SPAWN.Barrier(3)
    _join_all([_start(_contend, str(root), step, timeout, str(tmp_path / "winners"), barrier) for _ in range(3)])
    assert len(_lines(tmp_path / "winners" / "won")) == 1
    assert store.state(step) is State.DONE


def test_heartbeats_keep_a_live_lease_from_being_taken(tmp_path):
    root, step, timeout = tmp_path / "store", _steps(1)[0], 2.0  # 40 heartbeats (every 0.05 s) per timeout
    holder = _start(_hold, str(root), step, OTHER_HOST, timeout, str(tmp_path / "started"), str(tmp_path / "release"))
    _wait_for(tmp_path / "started")
    store = Store(root, lease_timeout=timeout)
    attempts = []
    deadline = time.time() + 2.5 * timeout  # the lease outlives its timeout two and a half times over
    while time.time() < deadline:
        with store.claim(step) as lease:
            attempts.append(lease)
        time.sleep(0.05)
    (tmp_path / "release").write_text("")
    assert len(attempts) > 10 and attempts == [None] * len(attempts)
    holder.join(60)
    assert holder.exitcode == 0 and store.state(step) is State.DONE
    assert store.record(step)["attempt"] == 1


def test_a_lease_without_heartbeats_goes_stale_and_its_holder_learns_it_lost(tmp_path):
    step = _steps(1)[0]
    slow, fast = Store(tmp_path, lease_timeout=2.0), Store(tmp_path, lease_timeout=2.0)
    with slow.claim(step, heartbeat=False) as first:
        for _ in range(4):  # explicit beats keep it
            time.sleep(0.1)
            assert first.beat()
            with fast.claim(step) as nobody:
                assert nobody is None
        last_beat = first.heartbeat
        while time.time() - last_beat <= 2.0:  # no beat for longer than the timeout: stale although this process lives
            time.sleep(0.05)
        assert slow.state(step) is State.INTERRUPTED
        with fast.claim(step) as second:
            assert second is not None and second.generation == first.generation + 1
            assert not first.beat() and first.lost
            assert fast.holder(step).owner == second.owner
    assert fast.state(step) is State.DONE and fast.record(step)["attempt"] == 2


# -- markers -------------------------------------------------------------------------------------------


def _diverge() -> None:
    raise ValueError("loss is nan at step 17")


def test_failed_marker_holds_the_traceback_and_a_rerun_clears_it(tmp_path):
    store, step = Store(tmp_path), _steps(1)[0]
    with pytest.raises(ValueError), store.claim(step) as lease:
        assert lease is not None
        store.step_dir(step).mkdir(parents=True)
        (store.step_dir(step) / "metrics.jsonl").write_text('{"step": 1')
        _diverge()
    failure = store.failure(step)
    assert (failure["error_type"], failure["message"]) == ("ValueError", "loss is nan at step 17")
    assert "in _diverge" in failure["traceback"] and failure["traceback"].rstrip().endswith("ValueError: loss is nan at step 17")
    assert (failure["host"], failure["pid"]) == (socket.gethostname(), os.getpid())
    assert re.match(r"\d{4}-\d\d-\d\dT", failure["time"])
    assert store.state(step) is State.FAILED and store.holder(step) is None
    assert not (store.step_dir(step) / SUCCESS).exists()
    assert not [f for f in _all_files(tmp_path) if f.endswith(".tmp")]
    assert store.explain(step) == Decision(True, "failed before: ValueError: loss is nan at step 17", State.FAILED)
    with store.claim(step) as lease:
        assert lease is not None and store.failure(step) is None  # cleared before the rerun's work
    assert store.state(step) is State.DONE and store.explain(step).run is False


def test_run_records_a_failure_and_a_waiting_sweep_does_not_rerun_it(tmp_path):
    root, step = tmp_path / "store", _steps(1)[0]
    other = _start(_fail_later, str(root), step, str(tmp_path / "started"), str(tmp_path / "go"))
    _wait_for(tmp_path / "started")
    store = Store(root)
    assert store.run(step, lambda: _write_line(tmp_path / "ours"), wait=False) is State.RUNNING
    (tmp_path / "go").write_text("")
    assert store.run(step, lambda: _write_line(tmp_path / "ours"), poll=0.05) is State.FAILED
    _join_all([other])
    assert not (tmp_path / "ours").exists()
    assert store.failure(step)["message"] == "out of memory"
    assert store.run(step, lambda: _write_line(tmp_path / "ours")) is State.DONE  # a later sweep reruns it
    assert len(_lines(tmp_path / "ours")) == 1


def test_dep_failed_names_the_input_and_clears_when_the_step_runs(tmp_path):
    store = Store(tmp_path)
    corpus = Step("tokenize", "corpus", {"vocab": 512})
    run = Step("train", "run1", {"lr": 1e-3}, [corpus])
    assert store.run(corpus, _diverge) is State.FAILED
    store.mark_dep_failed(run, corpus, "input failed")
    assert store.state(run) is State.DEP_FAILED
    assert store.explain(run).reason == f"input failed before: {corpus.id}"
    assert {(i.stage, i.state) for i in store.list_steps()} == {("tokenize", State.FAILED), ("train", State.DEP_FAILED)}
    assert store.run(corpus, lambda: None) is State.DONE
    assert store.run(run, lambda: None) is State.DONE
    assert not (store.records_dir(run) / "DEP_FAILED").exists()


def test_interrupted_step_is_not_failed_and_resumes_from_its_checkpoint(tmp_path):
    store, step = Store(tmp_path), _steps(1)[0]
    with pytest.raises(KeyboardInterrupt), store.claim(step):
        store.step_dir(step).mkdir(parents=True)
        (store.step_dir(step) / "checkpoint-100.pt").write_text("weights")
        raise KeyboardInterrupt
    assert store.state(step) is State.INTERRUPTED and store.failure(step) is None
    assert json.loads((store.records_dir(step) / "INTERRUPTED").read_text())["reason"] == "KeyboardInterrupt"
    assert store.explain(step) == Decision(True, "interrupted: resumes from checkpoint", State.INTERRUPTED)
    seen = []
    assert store.run(step, lambda: seen.append((store.step_dir(step) / "checkpoint-100.pt").read_text())) is State.DONE
    assert seen == ["weights"] and store.record(step)["attempt"] == 2
    assert not (store.records_dir(step) / "INTERRUPTED").exists()


def test_step_json_records_config_inputs_and_code_version(tmp_path):
    store = Store(tmp_path)
    corpus = Step("tokenize", "corpus", {"vocab": 512})
    step = Step("train", "run1", {"lr": 1e-3}, [corpus])
    store.run(step, lambda: None)
    record = store.record(step)
    assert (record["config"], record["inputs"], record["hash"]) == ({"lr": 1e-3}, [corpus.id], step.hash)
    assert record["code"]["dcsl"] == dcsl_version()
    assert record["code"]["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", record["code"]["git_commit"])


# -- explain -------------------------------------------------------------------------------------------


def test_explain_names_new_done_changed_fields_and_changed_inputs(tmp_path):
    store = Store(tmp_path)
    corpus, other_corpus = Step("tokenize", "corpus", {"vocab": 512}), Step("tokenize", "corpus", {"vocab": 1024})
    base = {"model": {"width": 64}, "optimizer": {"lr": 1e-3, "betas": [0.9, 0.95]}, "seed": 0}
    first = Step("train", "run1", base, [corpus])
    assert store.explain(first) == Decision(True, "new", State.NEW)
    store.run(first, lambda: None)
    assert (store.explain(first).run, store.explain(first).reason) == (False, "done")

    second = Step("train", "run1", {**base, "optimizer": {"lr": 2e-3, "betas": [0.9, 0.95]}}, [corpus])
    decision = store.explain(second)
    assert (decision.run, decision.reason) == (True, "config changed: optimizer.lr 0.001 -> 0.002")
    assert decision.changed == {"optimizer.lr": (1e-3, 2e-3)}
    store.run(second, lambda: None)

    third = Step("train", "run1", {**second.config, "optimizer": {"lr": 2e-3, "betas": [0.9, 0.99]}, "warmup": 10}, [corpus])
    decision = store.explain(third)  # against the most recent version (second), so lr is not listed
    assert decision.changed == {"optimizer.betas": ([0.9, 0.95], [0.9, 0.99]), "warmup": (None, 10)}
    assert decision.reason == "config changed: optimizer.betas [0.9, 0.95] -> [0.9, 0.99], warmup (unset) -> 10"

    fourth = Step("train", "run1", second.config, [other_corpus])
    decision = store.explain(fourth)
    assert decision.reason == f"input changed: {corpus.id} -> {other_corpus.id}"
    assert decision.changed == {"inputs.tokenize/corpus": (corpus.id, other_corpus.id)}

    stranger = Step("train", "run10", {"seed": 5})  # started last, but run10 is not a version of run1
    store.run(stranger, lambda: None)
    assert store.explain(third).changed == {"optimizer.betas": ([0.9, 0.95], [0.9, 0.99]), "warmup": (None, 10)}
    assert store.explain(Step("train", "run10", {"seed": 6})).reason == "config changed: seed 5 -> 6"


def test_explain_running_elsewhere_shows_host_and_pid(tmp_path):
    store, step = Store(tmp_path), _steps(1)[0]
    with store.claim(step):
        decision = store.explain(step)
    assert (decision.run, decision.reason) == (False, f"running elsewhere ({socket.gethostname()}, pid {os.getpid()})")


# -- stages' own SUCCESS -------------------------------------------------------------------------------


def test_success_written_by_atomic_directory_counts_as_done(tmp_path):
    store = Store(tmp_path)
    corpus = Step("tokenize", "corpus", {"vocab": 512})
    with atomic_directory(store.step_dir(corpus)) as work:  # a stage run outside the pipeline
        (work / "tokens.bin").write_bytes(b"\x00\x01")
    assert store.state(corpus) is State.DONE and store.explain(corpus).reason == "done"
    with store.claim(corpus) as lease:
        assert lease is None
    assert store.run(corpus, lambda: pytest.fail("a done step ran")) is State.DONE
    [info] = store.list_steps()
    assert (info.stage, info.name, info.hash, info.state, info.record) == ("tokenize", "corpus", corpus.hash, State.DONE, None)


def test_a_stage_building_atomically_inside_a_claim_keeps_the_records_and_leaves_nothing_half_written(tmp_path):
    store = Store(tmp_path)
    good, bad = Step("tokenize", "corpus", {"vocab": 512}), Step("tokenize", "corpus", {"vocab": 1024})

    def build(step: Step, fail: bool) -> None:
        with atomic_directory(store.step_dir(step)) as work:
            (work / "tokens.bin").write_bytes(b"\x00" * 1000)
            if fail:
                raise OSError("disk full")

    assert store.run(good, lambda: build(good, False)) is State.DONE
    assert store.record(good)["attempt"] == 1 and store.holder(good) is None
    assert (store.step_dir(good) / "tokens.bin").stat().st_size == 1000
    assert store.run(bad, lambda: build(bad, True)) is State.FAILED
    assert not store.step_dir(bad).exists()
    assert sorted(p.name for p in (tmp_path / "tokenize").iterdir()) == [".steps", store.step_dir(good).name]
    assert store.failure(bad)["message"] == "disk full"
    assert not [f for f in _all_files(tmp_path) if f.endswith(".tmp")]


# -- a worker that died outside any claim; a store written by earlier code ---------------------------------


def test_mark_failed_records_a_worker_that_died_outside_a_claim_and_a_rerun_clears_it(tmp_path):
    store, (step, other) = Store(tmp_path), _steps(2)
    store.mark_failed(step, "OutOfMemoryError", "worker killed by the OOM killer\n(exit code -9)")
    failure = store.failure(step)
    assert store.state(step) is State.FAILED and failure["message"] == "worker killed by the OOM killer\n(exit code -9)"
    assert (failure["error_type"], failure["traceback"], failure["owner"], failure["host"], failure["pid"]) == (
        "OutOfMemoryError", "", None, socket.gethostname(), os.getpid())  # fmt: skip
    assert store.explain(step).reason == "failed before: OutOfMemoryError: worker killed by the OOM killer"
    assert store.run(other, _diverge) is State.FAILED and list(store.failure(other)) == list(failure)  # a claim's shape
    assert store.run(step, lambda: None) is State.DONE and store.failure(step) is None


def _old_records(root: Path, step: Step, **markers: dict) -> None:
    """`.steps/<name>-<hash>/` as earlier code wrote it: step.json, a released claim 0, and `markers`."""
    who = {"host": OTHER_HOST, "pid": 4242, "time": "2025-01-02T03:04:05.678+00:00"}
    files = {
        "step.json": {"stage": step.stage, "name": step.name, "hash": step.hash, "config": step.config,
                      "inputs": list(step.inputs), "code": {"dcsl": "0.1.0", "git_commit": None}, "attempt": 1,
                      "owner": "a" * 32, "slurm_job_id": None, **who, "started": 1735787045.0},
        "leases/lease.0": {"step": step.id, "owner": "a" * 32, "host": OTHER_HOST, "pid": 4242, "pid_start": "123",
                           "pidns": "pid:[1]", "boot_id": "boot", "slurm_job_id": None, "started": 1735787045.0},
        "leases/released.0": None,
        **{marker: {**content, "owner": "a" * 32, **who} for marker, content in markers.items()},
    }  # fmt: skip
    for name, content in files.items():
        path = root / step.stage / ".steps" / f"{step.name}-{step.hash}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("" if content is None else json.dumps(content, indent=2) + "\n")


def test_a_store_written_by_earlier_code_reads_with_its_states_and_resumes(tmp_path):
    corpus, done = Step("tokenize", "corpus", {"vocab": 512}), Step("train", "run1", {"lr": 0.001, "model": {"width": 64}})
    failed, stopped = Step("train", "run2", {"lr": 0.002}, [corpus]), Step("train", "run3", {"lr": 0.003}, [corpus])
    assert [s.id for s in (corpus, done, failed, stopped)] == [  # the hashes earlier code gave: old directories are found
        "tokenize/corpus-d6f2756c2f52657d", "train/run1-02d868d99864bfe2", "train/run2-e5ea558e4593d256",
        "train/run3-8337528de24d5574"]  # fmt: skip
    root = tmp_path / "store"
    for output, name, text in ((corpus, "SUCCESS", ""), (done, "SUCCESS", ""), (stopped, "checkpoint-100.pt", "weights")):
        (root / output.id).mkdir(parents=True)
        (root / output.id / name).write_text(text)  # two finished outputs, and the interrupted run's checkpoint
    _old_records(root, done)
    _old_records(root, failed, FAILED={"error_type": "RuntimeError", "message": "out of memory", "traceback": "Traceback ..."})
    _old_records(root, stopped, INTERRUPTED={"reason": "KeyboardInterrupt"})
    store = Store(root)
    assert [(i.stage, i.name, i.hash, i.state, i.detail) for i in store.list_steps()] == [
        ("tokenize", "corpus", corpus.hash, State.DONE, ""), ("train", "run1", done.hash, State.DONE, ""),
        ("train", "run2", failed.hash, State.FAILED, "RuntimeError: out of memory"),
        ("train", "run3", stopped.hash, State.INTERRUPTED, "KeyboardInterrupt"),
    ]  # fmt: skip
    assert store.record(done)["config"] == done.config and [store.holder(s) for s in (done, failed, stopped)] == [None] * 3
    assert store.explain(stopped) == Decision(True, "interrupted: resumes from checkpoint", State.INTERRUPTED)
    assert store.run(done, lambda: pytest.fail("a done step ran")) is State.DONE
    seen = []
    assert store.run(stopped, lambda: seen.append((store.step_dir(stopped) / "checkpoint-100.pt").read_text())) is State.DONE
    assert seen == ["weights"] and store.record(stopped)["attempt"] == 2 and store.state(failed) is State.FAILED
    assert not (store.records_dir(stopped) / "INTERRUPTED").exists()
    assert (store.records_dir(stopped) / "leases" / "released.1").exists()  # claim 1 followed the old released claim 0
