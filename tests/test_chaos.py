"""Chaos: `dcsl sweep` killed with SIGKILL at random moments, round after round, loses no run, re-trains
no finished run and ends, once resumed, with the law of an uninterrupted sweep to the last bit; and a
killed sweep's local Ray cluster goes away with it. Rounds wait for states of the store (claims,
finished runs), never for fixed times; the moments are drawn from a seeded random generator."""

import os
import random
import shutil
import signal
import time
from pathlib import Path

import sweeps
from sweeps import RUNS

ROUNDS = 5
OUTLIVES = 10.0  # seconds a killed sweep's Ray processes may outlive it
MOST_EVENTS = 3  # a round is killed after 1 to 3 events (a run claimed or finished) of its own


def _events(store: Path) -> int:
    """Claims made on runs and runs finished so far: it grows by one at each step forward of a sweep."""
    return len(sweeps.leases(store)) + len(sweeps.successes(store))


def _gone(session: Path) -> None:
    """Wait (up to `OUTLIVES` seconds) until no process of the Ray session under `session` is left."""
    deadline = time.monotonic() + OUTLIVES
    while left := sweeps.session_processes(session):
        if time.monotonic() > deadline:
            commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80] for pid in left]
            raise AssertionError(f"{len(left)} processes of the Ray session outlived the sweep by {OUTLIVES} s: {commands}")
        time.sleep(0.2)


def _tokenized(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A store holding `finished`'s corpus, and its sweep file."""
    store = tmp_path / "store"
    shutil.copytree(finished / "tokenize", store / "tokenize", symlinks=True)
    return store, sweeps.write(tmp_path, store)


def _kill_at_a_random_moment(config: Path, store: Path, session: Path, rng: random.Random) -> None:
    """Start the sweep and kill -9 its process group after a random number of its own events, before every run
    is done: each run left has a claim and a SUCCESS ahead, and the kill comes before the last of them."""
    ahead = 2 * (RUNS - len(sweeps.successes(store)))
    target = _events(store) + rng.randint(1, min(MOST_EVENTS, ahead - 1))
    sweep = sweeps.start(config, sweeps.env(session), start_new_session=True)
    sweeps.wait_for(lambda: _events(store) >= target, sweep)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    _gone(session)


def test_a_killed_drivers_local_ray_cluster_goes_away(finished, tmp_path, ray_tmp):
    store, config = _tokenized(finished, tmp_path)
    sweep = sweeps.start(config, sweeps.env(ray_tmp))
    sweeps.wait_for(lambda: sweeps.leases(store), sweep)  # a run is training on the local cluster
    assert len(sweeps.session_processes(ray_tmp)) >= 5  # the driver, the watchdog, ray start, the GCS, the raylet, ...
    os.kill(sweep.pid, signal.SIGKILL)  # the driver alone: not its process group
    sweep.wait()
    _gone(ray_tmp)


def test_sweeps_killed_at_random_moments_lose_nothing_and_give_the_same_law(finished, tmp_path, ray_tmp):
    store, config = _tokenized(finished, tmp_path)
    rng = random.Random(2026)
    for round_ in range(ROUNDS):
        before, attempts = sweeps.successes(store), sweeps.attempts(store)
        _kill_at_a_random_moment(config, store, ray_tmp / str(round_), rng)
        after = sweeps.successes(store)
        assert len(after) < RUNS, round_  # killed before every run was done
        assert {name: after[name] for name in before} == before, round_  # no finished run ran again ...
        assert {name: sweeps.attempts(store)[name] for name in before} == {name: attempts[name] for name in before}
    before = sweeps.successes(store)
    result = sweeps.run(config, environment=sweeps.env(ray_tmp / "last"))
    assert result.returncode == 0 and f"{RUNS} of {RUNS} runs succeeded" in result.stdout, result.stderr[-3000:]
    _gone(ray_tmp / "last")  # a sweep that ends leaves no process either
    after = sweeps.successes(store)
    assert len(after) == RUNS and {name: after[name] for name in before} == before  # no run lost, none re-trained
    assert max(sweeps.attempts(store).values()) > 1  # kills landed while runs were training
    assert sweeps.law(store)["params"] == sweeps.law(finished)["params"]  # floats, equal to the last bit
    reference = sweeps.records(finished)
    assert {name: record["val_loss"] for name, record in sweeps.records(store).items()} == {
        name: record["val_loss"] for name, record in reference.items()}  # fmt: skip

