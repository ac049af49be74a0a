"""A real multi-pool training run on CPU: exact per-pool numbers in its record, every pool scored, and a run
cut off after a checkpoint resumes to the numbers of the uninterrupted one, step by step."""

import os
import shutil
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from stages.artifacts import SUCCESS  # noqa: E402
from stages.checkpoint import FOLDER  # noqa: E402
from stages.data import TokenData  # noqa: E402
from stages.launch import run_path, train  # noqa: E402
from stages.metrics import read_metrics  # noqa: E402
from stages.pool_data import pool_data  # noqa: E402
from stages.record import RECORD, read_record  # noqa: E402
from stages.run_config import RunConfig  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402

DATA = {
    "name": "two-pools",
    "tokenizer": {"vocab_size": 300, "training_characters": "120K"},
    "pools": [
        {"name": "prose", "corpus": {"source": "prose", "max_documents": 40}, "validation_tokens": "2K"},
        {"name": "code", "corpus": {"source": "stdlib", "max_documents": 30}, "validation_tokens": "2K"},
    ],
}
RUN = {
    "name": "pools",
    "model": {"layers": 1, "width": 32, "heads": 1},
    "seq_len": 32,
    "tokens": 20 * 256,  # 160 sequences: 48 of prose (1.536 epochs of 1,000 tokens), 112 of code (0.448 of 8,000)
    "unique_tokens": 9_000,
    "batch_tokens": 256,
    "optimizer": {"lr": 5e-3},
    "device": "cpu",
    "checkpoint_every": 5,
    "keep_checkpoints": 4,
    "wandb": {"mode": "disabled"},
    "pools": {"eval": "code", "budgets": [{"name": "prose", "unique_tokens": 1_000, "tokens": 48 * 32},
                                          {"name": "code", "unique_tokens": 8_000, "tokens": 112 * 32}]},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def data(store) -> TokenData:
    return TokenData(tokenize(TokenizeConfig.model_validate(DATA), store))


@pytest.fixture(scope="module")
def finished(data, store):
    return train(RunConfig.model_validate(RUN), data.path, store)


def test_the_pools_artifact_holds_one_artifact_per_pool_and_one_tokenizer(data):
    pools = pool_data(data)
    assert list(pools) == ["prose", "code"]
    assert all(pool.manifest["validation"]["tokens"] == 2_000 and pool.train_tokens > 8_000 for pool in pools.values())
    assert {pool.manifest["tokenizer"]["vocab_size"] for pool in pools.values()} == {data.manifest["tokenizer"]["vocab_size"]}
    assert (pools["prose"].path / "tokenizer.json").read_bytes() == (data.path / "tokenizer.json").read_bytes()
    assert all(sample["documents"] > 0 for sample in data.manifest["tokenizer"]["training_sample"].values())


def test_the_record_holds_exact_per_pool_numbers_and_every_pools_loss(finished):
    record = read_record(finished)
    assert (record.tokens, record.unique_tokens, record.steps, record.eval_pool) == (5_120, 9_000, 20, "code")
    assert [(p.name, p.tokens, p.unique_tokens, p.epochs) for p in record.pools] == [
        ("prose", 1_536, 1_000, 1.536), ("code", 3_584, 8_000, 0.448)]
    assert record.val_loss == record.pools[1].val_loss != record.pools[0].val_loss
    assert all(p.val_tokens == 62 * 32 and p.val_loss < np.log(300) for p in record.pools)


def test_a_cut_off_run_resumes_to_the_numbers_of_the_uninterrupted_one(finished, data, store):
    config = RunConfig.model_validate({**RUN, "name": "cut-off"})
    run_dir = run_path(config, data.path, store)
    shutil.copytree(finished, run_dir)
    for path in (run_dir / SUCCESS, run_dir / RECORD):
        path.unlink()
    for step in (15, 20):  # cut off after the checkpoint at step 10
        shutil.rmtree(run_dir / FOLDER / f"step-{step:08d}")
    train(config, data.path, store)
    record, reference = read_record(run_dir), read_record(finished)
    assert record.resumed_at == [10]
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 21))
    losses = [[m["loss"] for m in read_metrics(folder)] for folder in (run_dir, finished)]
    assert np.abs(np.subtract(*losses)).max() < 1e-6
    assert [p.tokens for p in record.pools] == [p.tokens for p in reference.pools]
    assert [p.val_loss for p in record.pools] == pytest.approx([p.val_loss for p in reference.pools], abs=1e-6)
