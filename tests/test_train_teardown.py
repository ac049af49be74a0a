"""Ranks leave a finished multi-rank run in order, and a rank that dies after the run cannot fail it.

Real torchrun runs on CPU (gloo): after its run a rank holds no gloo thread (the process groups are
gone before the interpreter exits); a rank that aborts once the run has finished leaves a complete,
finished run and a warning; a real error still fails the run; and many two-rank runs in a row
(DeepSpeed ZeRO-2 and DDP alternating) all end with SUCCESS and every rank exiting 0.
"""

import json
import os
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

import pipeline.cli.train_commands  # noqa: E402,F401  (registers the command)
import teardown_probe  # noqa: E402
import stages.launch  # noqa: E402
from pipeline.cli import main  # noqa: E402
from stages.artifacts import SUCCESS, is_complete  # noqa: E402
from stages.distributed import free_port  # noqa: E402
from stages.launch import WORKER_LOG, TeardownWarning, WorkersFailed, prepare, train  # noqa: E402
from stages.record import RECORD, read_record  # noqa: E402
from stages.run_config import RunConfig  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402
from stages.train import ABORT_AFTER_RUN, write_run_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(teardown_probe.__file__)
DATA = {
    "corpus": {"source": "stdlib", "max_documents": 40},
    "tokenizer": {"vocab_size": 512, "training_characters": "100K"},
    "validation_tokens": "4K",
    "seed": 2,
}
# 1 x 32 model, 10 steps of 16 sequences of 32 tokens on 2 ranks
RUN = {
    "model": {"layers": 1, "width": 32, "heads": 1},
    "seq_len": 32,
    "tokens": 10 * 512,
    "unique_tokens": "10K",
    "batch_tokens": 512,
    "device": "cpu",
    "eval_tokens": 1024,
    "processes": 2,
    "wandb": {"mode": "disabled"},
}
BACKENDS = {"zero2": {"backend": "deepspeed", "zero_stage": 2}, "ddp": {"backend": "torch"}}
REPEATS = 10


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One CPU thread per rank: steady on a small, busy machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The store every run here shares."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def data_path(store) -> Path:
    """The one tokenized corpus of the store (`dcsl train` of DATA reuses it)."""
    return tokenize(TokenizeConfig.model_validate(DATA), store)


def _config(name: str, layout: str, **changes) -> RunConfig:
    return RunConfig.model_validate({**RUN, **BACKENDS[layout], "name": name, **changes})


@pytest.mark.parametrize("layout", sorted(BACKENDS))
def test_ranks_hold_no_gloo_thread_after_their_run(layout, data_path, store, tmp_path):
    run_dir = prepare(_config(f"probe-{layout}", layout), data_path, store)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(PROBE), str(run_dir), str(data_path)]  # fmt: skip
    python_path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": python_path, teardown_probe.OUT: str(tmp_path)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_record(run_dir).world_size == 2
    for rank in (0, 1):
        threads = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        assert threads, "the probe read no thread at all"
        assert [name for name in threads if "gloo" in name] == [], (rank, threads)


def _write_run_file(path: Path, store: Path, run: dict) -> str:
    path.write_text(yaml.safe_dump({"store": str(store), "data": DATA, "run": run}, sort_keys=False))
    return str(path)


def test_a_rank_aborting_after_the_run_leaves_it_finished_with_a_warning(store, data_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ABORT_AFTER_RUN, "1")
    config = _write_run_file(tmp_path / "run.yaml", store, {**RUN, **BACKENDS["zero2"], "name": "aborts"})
    assert main(["train", config]) == 0
    captured = capsys.readouterr()
    note = "rank 1 exited with SIGABRT after the run finished; the run is complete"
    assert f"warning: {note}" in captured.err.splitlines()
    run_dir = stages.launch.run_path(_config("aborts", "zero2"), data_path, store)
    assert captured.out.splitlines()[0] == f"wrote {run_dir}"
    assert is_complete(run_dir) and read_record(run_dir).status == "succeeded"
    log = (run_dir / WORKER_LOG).read_text()
    assert "exitcode  : -6" in log and log.endswith(f"warning: {note}\n")


def test_a_rank_failing_before_the_record_fails_the_run(store, data_path, monkeypatch):
    def too_many_unique_tokens(config: RunConfig, run_dir: Path) -> None:
        write_run_config(config.model_copy(update={"unique_tokens": 10**9}), run_dir)  # every rank raises on it

    monkeypatch.setattr(stages.launch, "write_run_config", too_many_unique_tokens)
    config = _config("fails", "ddp")
    with pytest.raises(WorkersFailed, match=r"the 2 ranks of fails-\w+ exited with 1: .*InputError.*exceeds"):
        train(config, data_path, store)
    run_dir = stages.launch.run_path(config, data_path, store)
    assert not (run_dir / RECORD).exists() and not (run_dir / SUCCESS).exists()
    assert "warning:" not in (run_dir / WORKER_LOG).read_text()


def test_many_two_rank_runs_in_a_row_all_finish_cleanly(store, data_path):
    layouts = [sorted(BACKENDS)[i % 2] for i in range(REPEATS)]
    finished = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeardownWarning)  # a rank exiting non-zero after its run fails this test
        for index, layout in enumerate(layouts):
            run_dir = train(_config(f"repeat-{index}", layout, seed=index), data_path, store)
            finished.append((layout, is_complete(run_dir), read_record(run_dir).world_size, (run_dir / WORKER_LOG).read_text()))
    for layout, complete, world, log in finished:
        assert complete and world == 2, layout
        assert "exitcode" not in log and "warning:" not in log, log[-2000:]
