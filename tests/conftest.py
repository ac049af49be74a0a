"""Shared fixtures: the example C4 runs, synthetic run tables drawn from known laws, and one finished mini sweep."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import sweeps
from scaling.laws import DataConstrainedLaw
from scaling.runs import RunTable, read_csv_runs

REPO = Path(__file__).resolve().parents[1]
C4_CSV = REPO / "examples" / "datablations_c4.csv"
TRUE_LAW = DataConstrainedLaw(E=1.8, A=450.0, B=1200.0, alpha=0.34, beta=0.30, rd_star=12.0, rn_star=4.0)


@pytest.fixture(scope="session")
def c4_runs() -> RunTable:
    return read_csv_runs(C4_CSV)


def synthetic_runs(law, noise: float, seed: int = 1, repeat: bool = True) -> RunTable:
    """Runs on a grid of 8 sizes x 6 unique budgets x 7 epoch counts, loss from `law` times lognormal noise."""
    sizes, budgets = np.geomspace(2e7, 5e9, 8), np.geomspace(2e8, 5e10, 6)
    epochs = np.array([1, 2, 4, 8, 16, 32, 64.0]) if repeat else np.array([1.0])
    grid = np.array([(n, u * r, u) for n in sizes for u in budgets for r in epochs])
    rng = np.random.default_rng(seed)
    loss = law.predict(grid[:, 0], grid[:, 1], grid[:, 2]) * np.exp(rng.normal(0.0, noise, len(grid)))
    return RunTable(grid[:, 0], grid[:, 1], grid[:, 2], loss, tuple(f"run{i}" for i in range(len(grid))))


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Path:
    """The store of one uninterrupted `dcsl sweep` of `sweeps.SWEEP`: the reference the end-to-end tests compare with."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    store = folder / "store"
    result = sweeps.run(sweeps.write(folder, store))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{sweeps.RUNS} of {sweeps.RUNS} runs succeeded" in result.stdout
    return store


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """One torch thread for a whole test module (OMP_NUM_THREADS=1 and torch.set_num_threads(1)), restored after it:
    an in-process run, a subprocess and each torchrun rank then do the same float operations in the same order."""
    import torch

    saved_env, saved_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved_threads)
    if saved_env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = saved_env


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A fresh folder for the Ray sessions of a test's sweeps (`RAY_TMPDIR`), removed after the test.

    Short, under /tmp: Ray's socket paths inside it must stay under 108 characters.
    """
    folder = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
