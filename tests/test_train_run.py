"""Real training runs on CPU: the loss falls, a killed run resumes to the same numbers, DDP / DeepSpeed /
gradient accumulation give the curve of one process, divergence is recorded, finished runs are reused.

Every run here uses one CPU thread per process (OMP_NUM_THREADS=1 and torch.set_num_threads(1)), so
an in-process run, a subprocess and each torchrun rank do the same float operations in the same order.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
_WANDB_HOME = tempfile.mkdtemp(prefix="dcsl-wandb-")
for _name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
    os.environ.setdefault(_name, os.path.join(_WANDB_HOME, _name.lower()))
os.environ["WANDB_MODE"] = "offline"  # never the network
os.environ["WANDB_SILENT"] = "true"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import stages.train  # noqa: E402
from stages.artifacts import SUCCESS  # noqa: E402
from stages.checkpoint import FOLDER, checkpoints  # noqa: E402
from stages.data import TokenData  # noqa: E402
from stages.launch import run_path, train  # noqa: E402
from stages.record import read_record  # noqa: E402
from stages.metrics import METRICS, read_metrics  # noqa: E402
from stages.run_config import RunConfig  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402
from stages.train import FAILED, RECORD, RunDiverged  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB = 512
DATA = {
    "corpus": {"source": "stdlib", "max_documents": 60},
    "tokenizer": {"vocab_size": VOCAB, "training_characters": "150K"},
    "validation_tokens": "8K",
    "seed": 1,
    "split": {"near_duplicates": None},  # the split as before clean evaluation: these tests calibrate training, not the split
}
# The main run: 2 x 64 model (131,392 parameters, 98,624 non-embedding), 80 steps of 1024 tokens,
# D = 81,920 tokens over U = 40K (2.048 epochs), checkpoints every 10 steps, the 2 newest kept.
MAIN = {
    "name": "main",
    "model": {"layers": 2, "width": 64, "heads": 2},
    "seq_len": 32,
    "tokens": 80 * 1024,
    "unique_tokens": "40K",
    "batch_tokens": 1024,
    "optimizer": {"lr": 1e-2, "warmup": 0.1},
    "device": "cpu",
    "eval_tokens": 4096,
    "checkpoint_every": 10,
    "keep_checkpoints": 2,
    "wandb": {"mode": "offline"},
}
MAIN_STEPS = 80
# The curve comparisons: 16 steps of 16 sequences of 32 tokens.
SMALL = {
    "model": {"layers": 2, "width": 64, "heads": 2},
    "seq_len": 32,
    "tokens": 16 * 512,
    "unique_tokens": "20K",
    "batch_tokens": 512,
    "optimizer": {"lr": 3e-3},
    "device": "cpu",
    "eval_tokens": 2048,
    "wandb": {"mode": "disabled"},
}
RTOL = 1e-5  # per-step loss, same global batch, different reduction order


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def data(store) -> TokenData:
    data = TokenData(tokenize(TokenizeConfig.model_validate(DATA), store))
    assert data.manifest["tokenizer"]["vocab_size"] == VOCAB and data.train_tokens > 40_000
    return data


@pytest.fixture(scope="module")
def main_run(data, store) -> Path:
    return train(RunConfig.model_validate(MAIN), data.path, store)


@pytest.fixture(scope="module")
def reference(data, store) -> Path:
    """SMALL on one process, no accumulation: the curve the other layouts must reproduce."""
    return train(RunConfig.model_validate({**SMALL, "name": "reference"}), data.path, store)


def _column(run_dir: Path, key: str) -> np.ndarray:
    return np.array([record[key] for record in read_metrics(run_dir)], dtype=float)


def _complete_lines(path: Path) -> list[dict]:
    """The whole lines of a metrics file that a kill may have left with a torn last line."""
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


# --- one run, start to finish --------------------------------------------------------------------


def test_loss_falls_well_below_log_vocab(main_run):
    record = read_record(main_run)
    metrics = read_metrics(main_run)
    log_v = math.log(VOCAB)  # 6.238: the loss of a uniform guess
    assert [m["step"] for m in metrics] == list(range(1, MAIN_STEPS + 1))
    assert abs(metrics[0]["loss"] - log_v) < 0.1  # starts at chance
    assert record.val_loss < 0.75 * log_v  # ~0.68 log V after 80 steps
    assert record.train_loss < 0.75 * log_v and metrics[0]["loss"] - record.train_loss > 1.5
    assert record.train_loss == metrics[-1]["loss"]
    # a smoothed curve goes down: every 10-step mean below the one before
    means = np.array([m["loss"] for m in metrics]).reshape(8, 10).mean(axis=1)
    assert np.all(np.diff(means) < 0), means
    # the record's numbers
    assert record.status == "succeeded" and record.steps == MAIN_STEPS
    assert (record.params, record.params_non_embedding, record.params_embedding) == (131392, 98624, 32768)
    assert record.tokens == 81920 and record.unique_tokens == 40000 and record.epochs == 81920 / 40000
    assert record.flops == 6 * 98624 * 81920
    assert record.flops_full == (6 * 98624 + 6 * 64 * VOCAB + 12 * 2 * 32 * 64) * 81920
    assert record.val_tokens == (4096 - 1) // 32 * 32
    assert record.world_size == 1 and record.backend == "torch" and record.resumed_at == []
    assert record.train_seconds > 0 and record.tokens_per_s == pytest.approx(81920 / record.train_seconds)


def test_metrics_follow_the_schedule_and_the_token_count(main_run):
    metrics = read_metrics(main_run)
    lr = _column(main_run, "lr")
    assert [m["tokens"] for m in metrics] == [1024 * step for step in range(1, MAIN_STEPS + 1)]
    assert lr[-1] == 0.1 * 1e-2  # exactly the final ratio at D
    assert lr[7] == 1e-2 and lr.max() == 1e-2  # warmup ends after 8 steps (8192 = 0.1 D tokens)
    assert np.allclose(lr[:8], 1e-2 * np.arange(1, 9) / 8, rtol=1e-15, atol=0)
    assert np.all(np.diff(lr[7:]) < 0)
    # epochs: (40000 - 1) // 32 = 1249 sequences of 32 tokens per epoch (39,968 target tokens); 32 per step
    tokens_per_epoch = (40000 - 1) // 32 * 32
    assert [m["epochs"] for m in metrics] == pytest.approx([1024 * s / tokens_per_epoch for s in range(1, MAIN_STEPS + 1)])
    assert [m["epoch"] for m in metrics] == [(s - 1) * 32 // 1249 for s in range(1, MAIN_STEPS + 1)]
    assert all(math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0 for m in metrics)
    assert all(m["mfu"] is None for m in metrics)  # no known CPU peak


def test_checkpoints_keep_the_newest_and_leave_no_temporaries(main_run):
    folder = main_run / FOLDER
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000070", "step-00000080"]
    assert [p.name for p in checkpoints(main_run)] == ["step-00000070", "step-00000080"]
    assert [p for p in main_run.rglob(".tmp-*")] == []
    for step in (70, 80):
        saved = folder / f"step-{step:08d}"
        state = json.loads((saved / "state.json").read_text())
        assert state["step"] == step and state["world"] == 1 and state["resumed_at"] == []
        assert state["train_loss"] == read_metrics(main_run)[step - 1]["loss"]
        assert sorted(p.name for p in saved.iterdir()) == ["engine.pt", "rng-0.pt", "state.json"]


def test_wandb_offline_run_directory_is_recorded(main_run):
    record = read_record(main_run)
    wandb_dir = Path(record.wandb_dir)
    assert wandb_dir.is_dir()
    assert wandb_dir.parent == main_run / "wandb"
    assert wandb_dir.name.startswith("offline-run-") and wandb_dir.name.endswith(record.run_hash)
    log = wandb_dir / f"run-{record.run_hash}.wandb"
    assert log.is_file() and log.stat().st_size > 1000


def test_rerunning_a_finished_run_reuses_it(main_run, data, store):
    success = (main_run / SUCCESS).stat().st_mtime_ns
    record = (main_run / RECORD).read_bytes()
    # operational fields (logging, checkpoints, W&B) do not make it another run
    changed = RunConfig.model_validate({**MAIN, "log_every": 5, "keep_checkpoints": 4, "wandb": {"mode": "disabled"}})
    started = time.perf_counter()
    assert train(changed, data.path, store) == main_run
    assert train(RunConfig.model_validate(MAIN), data.path, store) == main_run
    assert time.perf_counter() - started < 5
    assert (main_run / SUCCESS).stat().st_mtime_ns == success
    assert (main_run / RECORD).read_bytes() == record
    assert len(read_metrics(main_run)) == MAIN_STEPS


# --- a real kill -------------------------------------------------------------------------------

WORKER = (
    "import sys; from pathlib import Path; from stages.run_config import RunConfig; from stages.launch import train; "
    "train(RunConfig.model_validate_json(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))"
)


def test_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(main_run, data, tmp_path):
    config = RunConfig.model_validate({**MAIN, "wandb": {"mode": "disabled"}})
    store = tmp_path / "store"
    run_dir = run_path(config, data.path, store)
    assert run_dir.name == main_run.name  # the same run (W&B is operational), in another store
    first = run_dir / FOLDER / "step-00000010" / "state.json"
    log = tmp_path / "worker.log"
    with open(log, "w") as output:
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, config.model_dump_json(), str(data.path), str(store)],
            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while not first.exists() and worker.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert worker.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert first.exists(), "no checkpoint at step 10 within 180 s"
            os.killpg(worker.pid, signal.SIGKILL)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=60)
    assert worker.returncode == -signal.SIGKILL
    assert not (run_dir / SUCCESS).exists() and not (run_dir / RECORD).exists()
    killed_at = int(checkpoints(run_dir)[-1].name.split("-")[1])
    assert 10 <= killed_at < MAIN_STEPS and killed_at % 10 == 0
    before = _complete_lines(run_dir / METRICS)
    assert len(before) >= killed_at

    # run it again: it resumes from the newest checkpoint and finishes
    resumed = train(config, data.path, store)
    assert resumed == run_dir and (run_dir / SUCCESS).exists()
    record, reference = read_record(run_dir), read_record(main_run)
    assert record.resumed_at == [killed_at]
    assert json.loads((run_dir / FOLDER / f"step-{MAIN_STEPS:08d}" / "state.json").read_text())["resumed_at"] == [killed_at]
    assert abs(record.val_loss - reference.val_loss) < 1e-6
    assert abs(record.train_loss - reference.train_loss) < 1e-6
    # the metrics file: steps 1..80 once each, the losses of the uninterrupted run step by step
    metrics, expected = read_metrics(run_dir), read_metrics(main_run)
    assert [m["step"] for m in metrics] == list(range(1, MAIN_STEPS + 1))
    assert np.abs(_column(run_dir, "loss") - _column(main_run, "loss")).max() < 1e-6
    assert [m["lr"] for m in metrics] == [m["lr"] for m in expected]
    # what the killed process logged before the kill was already the same curve
    assert np.abs(np.array([m["loss"] for m in before]) - _column(main_run, "loss")[: len(before)]).max() < 1e-6
    assert [p.name for p in checkpoints(run_dir)] == ["step-00000070", "step-00000080"]
    assert [p for p in run_dir.rglob(".tmp-*")] == []


# --- the same global batch in other layouts gives the same curve ---------------------------------


def _assert_same_curve(run_dir: Path, reference: Path) -> None:
    loss, expected = _column(run_dir, "loss"), _column(reference, "loss")
    assert len(loss) == len(expected) == 16
    assert expected[0] - expected[-1] > 0.5  # the curve moves, so agreeing means something
    np.testing.assert_allclose(loss, expected, rtol=RTOL, atol=0)
    np.testing.assert_allclose(_column(run_dir, "grad_norm"), _column(reference, "grad_norm"), rtol=1e-3)
    assert list(_column(run_dir, "lr")) == list(_column(reference, "lr"))
    assert read_record(run_dir).val_loss == pytest.approx(read_record(reference).val_loss, rel=RTOL)


def test_gradient_accumulation_gives_the_curve_of_none(reference, data, store):
    run_dir = train(RunConfig.model_validate({**SMALL, "name": "accumulate", "micro_batch_size": 2}), data.path, store)
    _assert_same_curve(run_dir, reference)  # 8 micro-batches of 2 sequences per step


@pytest.mark.parametrize("micro_batch_size", [None, 4], ids=["ddp", "ddp-accumulating"])
def test_ddp_on_two_cpu_ranks_gives_the_curve_of_one_process(reference, data, store, micro_batch_size):
    config = RunConfig.model_validate({**SMALL, "name": f"ddp-{micro_batch_size}", "processes": 2, "micro_batch_size": micro_batch_size})
    run_dir = train(config, data.path, store)
    record = read_record(run_dir)
    assert record.world_size == 2 and record.backend == "torch"
    _assert_same_curve(run_dir, reference)


@pytest.mark.parametrize("stage", [1, 2], ids=["zero1", "zero2"])
def test_deepspeed_zero_on_two_cpu_ranks_gives_the_curve_of_one_process(reference, data, store, stage):
    # 8 sequences per rank in 2 micro-batches of 4: DeepSpeed's own accumulation; ZeRO-1 partitions the
    # optimiser state, ZeRO-2 the gradients too
    config = RunConfig.model_validate(
        {**SMALL, "name": f"zero{stage}", "backend": "deepspeed", "zero_stage": stage, "processes": 2, "micro_batch_size": 4}
    )
    run_dir = train(config, data.path, store)
    record = read_record(run_dir)
    assert record.world_size == 2 and record.backend == "deepspeed"
    _assert_same_curve(run_dir, reference)
    # every rank wrote its ZeRO partition of the final checkpoint
    (final,) = checkpoints(run_dir)
    assert final.name == "step-00000016" and json.loads((final / "state.json").read_text())["world"] == 2
    assert sorted(p.name for p in final.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    shares = sorted((final / "engine").glob("*optim_states.pt"))
    assert len(shares) == 2
    for share in shares:  # written by the ZeRO stage asked for; each parameter group in 2 partitions
        saved = torch.load(share, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        assert int(saved["zero_stage"]) == stage and saved["partition_count"] == [2, 2]


def test_deepspeed_runs_in_the_bf16_autocast_the_config_asks_for(reference, data, store):
    # DeepSpeed switches an outer torch.autocast off inside its forward unless its own config turns it on:
    # on an H200 its bf16 runs were fp32 runs at a quarter of the speed (BENCHMARKS.md)
    bf16 = {**SMALL, "precision": "bf16"}
    one_process = train(RunConfig.model_validate({**bf16, "name": "bf16-torch"}), data.path, store)
    zero = RunConfig.model_validate(
        {**bf16, "name": "bf16-zero2", "backend": "deepspeed", "zero_stage": 2, "processes": 2, "micro_batch_size": 4}
    )
    loss, expected, fp32 = (_column(run, "loss") for run in (train(zero, data.path, store), one_process, reference))
    # the first loss is the same forward of the same weights: bf16 moves it by ~4e-5 here, reduction order by ~5e-7
    assert abs(loss[0] - expected[0]) < 0.1 * abs(expected[0] - fp32[0])
    np.testing.assert_allclose(loss, expected, rtol=1e-3)  # bf16 rounding of differently reduced gradients


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
def test_deepspeed_is_told_the_arithmetic_of_a_gpu_run(precision):
    # on a GPU, DeepSpeed turns the outer bf16 autocast off inside its forward unless its config enables it
    # (the CPU test above cannot see that: DeepSpeed only checks CUDA's autocast), so check what it parses
    from deepspeed.runtime.config import DeepSpeedConfig

    from stages.distributed import Ranks
    from stages.engines import deepspeed_settings

    config = RunConfig.model_validate({**SMALL, "name": "gpu", "device": "auto", "backend": "deepspeed", "precision": precision})
    parsed = DeepSpeedConfig(deepspeed_settings(config, Ranks(0, 1, 0, torch.device("cuda", 0)), micro_steps=2, micro_batch=8))
    assert parsed.torch_autocast_enabled == (precision != "fp32")
    if precision != "fp32":
        assert parsed.torch_autocast_dtype == torch.bfloat16
        assert parsed.torch_autocast_lower_precision_safe_modules == []  # gradients reduced in fp32, as by torch


# --- divergence ----------------------------------------------------------------------------------


def test_divergent_run_is_recorded_as_failed(data, tmp_path, monkeypatch):
    real = stages.train.token_losses
    calls = []

    def poisoned(logits, targets):
        calls.append(1)
        losses = real(logits, targets)
        return losses * math.nan if len(calls) >= 3 else losses  # NaN from step 3 on

    monkeypatch.setattr(stages.train, "token_losses", poisoned)
    config = RunConfig.model_validate({**SMALL, "name": "diverges", "tokens": 8 * 512, "wandb": {"mode": "offline"}})
    with pytest.raises(RunDiverged) as caught:
        train(config, data.path, tmp_path)
    run_dir = run_path(config, data.path, tmp_path)
    assert caught.value.step == 3 and "training loss is nan" in caught.value.reason
    failed = json.loads((run_dir / FAILED).read_text())
    assert failed == {"status": "failed", "step": 3, "reason": caught.value.reason}
    assert not (run_dir / RECORD).exists() and not (run_dir / SUCCESS).exists()
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in read_metrics(run_dir))
    assert len(calls) == 3  # stopped at once

    # fixed, the same config runs again from scratch and succeeds; the failure record goes
    monkeypatch.setattr(stages.train, "token_losses", real)
    assert train(config, data.path, tmp_path) == run_dir
    assert (run_dir / SUCCESS).exists() and not (run_dir / FAILED).exists()
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 9))
    assert read_record(run_dir).val_loss < math.log(VOCAB)


# --- a bug found while writing these tests -------------------------------------------------------


def test_checkpoints_land_every_checkpoint_every_steps_whatever_log_every(data, tmp_path):
    tiny = {**SMALL, "model": {"layers": 1, "width": 32, "heads": 1}, "tokens": 20 * 512, "name": "cadence",
            "log_every": 4, "checkpoint_every": 10, "keep_checkpoints": 5}  # fmt: skip
    run_dir = train(RunConfig.model_validate(tiny), data.path, tmp_path)
    # every log_every-th step, and the checkpoint's step too (the checkpoint keeps its loss)
    assert [m["step"] for m in read_metrics(run_dir)] == [4, 8, 10, 12, 16, 20]
    assert [p.name for p in checkpoints(run_dir)] == ["step-00000010", "step-00000020"]


# --- damaged checkpoints -------------------------------------------------------------------------


def _unfinished_copy(main_run: Path, data: TokenData, store: Path, name: str) -> tuple[RunConfig, Path]:
    """MAIN under another name, its directory a copy of the finished main run without SUCCESS and record:
    a run killed after its last checkpoint, whose numbers must equal the main run's."""
    config = RunConfig.model_validate({**MAIN, "name": name, "wandb": {"mode": "disabled"}})
    run_dir = run_path(config, data.path, store)
    shutil.copytree(main_run, run_dir, ignore=shutil.ignore_patterns("wandb"))
    (run_dir / SUCCESS).unlink()
    (run_dir / RECORD).unlink()
    return config, run_dir


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(main_run, data, store):
    config, run_dir = _unfinished_copy(main_run, data, store, "damaged-newest")
    engine = run_dir / FOLDER / f"step-{MAIN_STEPS:08d}" / "engine.pt"
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])  # truncated by a full disk, say
    with pytest.warns(UserWarning, match="checkpoint step-00000080 is damaged"):
        train(config, data.path, store)
    record, reference = read_record(run_dir), read_record(main_run)
    assert record.resumed_at == [70] and record.notes == ["checkpoint step-00000080 is damaged (engine.pt is not as written); skipped"]
    assert abs(record.val_loss - reference.val_loss) < 1e-6 and abs(record.train_loss - reference.train_loss) < 1e-6


def test_a_run_whose_checkpoints_are_all_damaged_starts_over(main_run, data, store):
    config, run_dir = _unfinished_copy(main_run, data, store, "damaged-all")
    (run_dir / FOLDER / f"step-{MAIN_STEPS:08d}" / "engine.pt").unlink()
    state = run_dir / FOLDER / "step-00000070" / "state.json"
    state.write_text(state.read_text()[:25])
    with pytest.warns(UserWarning, match="damaged"):
        train(config, data.path, store)
    record, reference = read_record(run_dir), read_record(main_run)
    assert record.resumed_at == [] and len(record.notes) == 2
    assert record.notes[0] == "checkpoint step-00000080 is damaged (engine.pt is missing); skipped"
    assert record.notes[1].startswith("checkpoint step-00000070 is damaged (state.json unreadable")
    assert abs(record.val_loss - reference.val_loss) < 1e-6
