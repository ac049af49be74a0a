"""`dcsl train RUN.yaml`: a summary with the run's numbers, reuse, and one-line errors with exit status 2."""

import os
import re
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"  # never the network

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import pipeline.cli.train_commands  # noqa: E402,F401  (registers the command)
from pipeline.cli import main  # noqa: E402
from stages.data import TokenData  # noqa: E402
from stages.record import read_record  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402

DATA = {
    "name": "tiny",
    "corpus": {"source": "stdlib", "max_documents": 30},
    "tokenizer": {"vocab_size": 400, "training_characters": "100K"},
    "validation_tokens": "4K",
}
# 1 layer, width 32, V = 400, rotary, tied: block 32*96 + 32*32 + 32*128 + 128*32 + 2*32 = 12352,
# non-embedding 12352 + 32 = 12384, embedding 400*32 = 12800, total 25184. 10 steps of 8 x 32 tokens.
RUN = {
    "name": "cli",
    "model": {"layers": 1, "width": 32, "heads": 1},
    "seq_len": 32,
    "tokens": 2560,
    "unique_tokens": "10K",
    "batch_tokens": 256,
    "device": "cpu",
    "wandb": {"mode": "disabled"},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store holding the tokenized corpus, so bad runs find their data (and tokenizing is reused)."""
    root = tmp_path_factory.mktemp("store")
    data = TokenData(tokenize(TokenizeConfig.model_validate(DATA), root))
    assert data.manifest["tokenizer"]["vocab_size"] == 400
    return root


def _write(path: Path, store: Path, run=None, **top) -> str:
    document = {"store": str(store), "data": DATA, **top}
    if run is not None:
        document["run"] = run
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return str(path)


def _train_folder(store: Path) -> list[tuple[str, int]]:
    """Every file and folder under the store's train/ folder with its modification time."""
    folder = store / "train"
    if not folder.exists():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture
def one_thread(monkeypatch):
    """One CPU thread: fast and steady on a small, busy machine (the run reads OMP_NUM_THREADS as chosen)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_train_prints_a_summary_then_reuses(store, tmp_path, capsys, one_thread):
    config = _write(tmp_path / "run.yaml", store, RUN)
    assert main(["train", config]) == 0
    captured = capsys.readouterr()
    (run_dir,) = (store / "train").iterdir()
    record = read_record(run_dir)
    assert captured.out.splitlines()[0] == f"wrote {run_dir}"
    val = re.search(r"val loss (\d+\.\d{4})  train loss (\d+\.\d{4})", captured.out)
    assert val is not None, captured.out
    assert float(val.group(1)) == round(record.val_loss, 4) and float(val.group(2)) == round(record.train_loss, 4)
    assert record.val_loss < 5.99  # log(400): it learned something in 10 steps
    assert "N 25.18K (12.38K non-embedding)  D 2.56K  U 10K  epochs 0.256" in captured.out
    assert (record.params, record.params_non_embedding, record.steps) == (25184, 12384, 10)
    assert f"FLOPs {6 * 12384 * 2560:.3e} (6ND)" in captured.out
    assert "1 rank(s), torch" in captured.out
    assert "error" not in captured.err

    # the same file again, and with an operational override: the finished run is reused
    success = (run_dir / "SUCCESS").stat().st_mtime_ns
    for argv in (["train", config], ["train", config, "--processes", "2"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0] == f"reused {run_dir}"
        assert f"val loss {record.val_loss:.4f}" in out
    assert (run_dir / "SUCCESS").stat().st_mtime_ns == success
    assert [p.name for p in (store / "train").iterdir()] == [run_dir.name]


def _with(**changes):
    return {**RUN, **changes}


# (run section or None for none, extra CLI arguments, the start of the one stderr line)
BAD = [
    pytest.param(_with(model={"layers": 1, "width": 32, "heads": 3}), [], "error: run.model.heads: 3 does not divide width 32",
                 id="heads-not-dividing-width"),
    pytest.param(_with(model={"layers": 1, "width": 48, "heads": 16}), [], "error: run.model.heads: 16 gives an odd head dimension 3",
                 id="odd-head-dim-with-rotary"),
    pytest.param(_with(seq_len=64, unique_tokens=64, tokens=640, batch_tokens=64), [],
                 "error: run.seq_len: 64 is not shorter than unique_tokens 64", id="seq-len-not-shorter-than-U"),
    pytest.param(_with(tokens=0), [], "error: run.tokens: 0 must be a positive finite number", id="zero-tokens"),
    pytest.param(_with(tokens=2600), [], "error: run.tokens: 2600 is not a multiple of seq_len 32", id="tokens-not-whole-sequences"),
    pytest.param(_with(tokens=2560 + 32), [], "error: run.tokens: 2592 is not a whole number of steps of batch_tokens 256",
                 id="tokens-not-whole-steps"),
    pytest.param(_with(backend="jax"), [], "error: run.backend: 'jax' is not allowed", id="unknown-backend"),
    pytest.param(_with(epochs=4), [], "error: run.epochs: unknown setting; allowed: name, model, seq_len", id="unknown-key"),
    pytest.param(_with(model={"layers": 1, "width": 32, "heads": 1, "depth": 2}), [], "error: run.model.depth: unknown setting",
                 id="unknown-model-key"),
    pytest.param(_with(optimizer={"lr": -0.001}), [], "error: run.optimizer.lr: -0.001 is not allowed", id="negative-lr"),
    pytest.param(_with(micro_batch_size=3), [], "error: run.micro_batch_size: 3 does not divide the 8 sequences",
                 id="micro-batch-not-dividing"),
    pytest.param(RUN, ["--processes", "0"], "error: --processes: 0 must be at least 1", id="processes-zero"),
    pytest.param(RUN, ["--processes", "3"], "error: run.batch_tokens: 8 sequences per step do not split evenly over 3 ranks",
                 id="processes-not-splitting-batch"),
    pytest.param(_with(unique_tokens="10M"), [], "error: unique_tokens: 10000000 exceeds the {train_tokens} training tokens of tiny",
                 id="U-larger-than-corpus"),
    pytest.param(_with(seq_len=4096, tokens=8192, batch_tokens=8192), [],
                 "error: seq_len: 4096 is not shorter than the 4000 validation tokens of tiny", id="seq-len-not-shorter-than-validation"),
    pytest.param({k: v for k, v in RUN.items() if k != "model"}, [], "error: run.model: ", id="model-missing"),
    pytest.param(None, [], "error: config: '{config}' has no 'run:' section", id="no-run-section"),
    pytest.param("missing", [], "error: config: '{config}' does not exist", id="missing-file"),
]


@pytest.mark.parametrize(("run", "extra", "expected"), BAD)
def test_bad_run_is_one_line_status_2_and_writes_nothing(run, extra, expected, store, tmp_path, capsys):
    if run == "missing":
        config = str(tmp_path / "missing.yaml")
    else:
        config = _write(tmp_path / "bad.yaml", store, run)
    before = _train_folder(store)
    assert main(["train", config, *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    message = [line for line in lines if line.strip()]
    train_tokens = TokenData(tokenize(TokenizeConfig.model_validate(DATA), store)).train_tokens
    assert len(message) == 1, captured.err
    assert message[0].startswith(expected.format(train_tokens=train_tokens, config=config)), message[0]
    assert captured.out == ""
    assert _train_folder(store) == before
    assert lines == message  # exactly one line on stderr, nothing else


def test_u_larger_than_the_corpus_names_the_training_token_count(store, tmp_path, capsys):
    train_tokens = TokenData(tokenize(TokenizeConfig.model_validate(DATA), store)).train_tokens
    assert 10_000 < train_tokens < 10_000_000
    config = _write(tmp_path / "big.yaml", store, _with(unique_tokens=train_tokens + 1))
    before = _train_folder(store)
    assert main(["train", config]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert _train_folder(store) == before
    assert line.startswith(f"error: unique_tokens: {train_tokens + 1} exceeds the {train_tokens} training tokens")
    assert line.endswith(f"use at most {train_tokens}")


def test_missing_and_malformed_files(store, tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["train", str(missing)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: config: '{missing}' does not exist"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [unclosed\n")
    assert main(["train", str(broken)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: config: '{broken}' is not valid YAML")
    assert not (tmp_path / "store").exists()
