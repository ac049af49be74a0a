"""The tokenize stage on real corpora with real `datasets` and `tokenizers`: exactness, round trip, bad input."""

import json
import os
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from scaling.errors import InputError  # noqa: E402
from stages.artifacts import atomic_directory, file_sha256, is_complete  # noqa: E402
from stages.corpus import stdlib_files  # noqa: E402
from stages.data import TokenData  # noqa: E402
from stages.sampler import SequenceSampler  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402
from stages.tokenizer import TokenizerConfig, train_tokenizer  # noqa: E402

DOCUMENTS = 40
SMALL = {
    "corpus": {"source": "stdlib", "max_documents": DOCUMENTS},
    "tokenizer": {"vocab_size": 600, "training_characters": "150K"},
    "validation_tokens": "5K",
    "seed": 3,
}


def _source_texts(count: int) -> list[str]:
    return [p.read_bytes().decode("utf-8", errors="replace") for p in stdlib_files()[:count]]


def _leftovers(store: Path) -> list[str]:
    folder = store / "tokenize"
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def data(store) -> TokenData:
    return TokenData(tokenize(TokenizeConfig.model_validate(SMALL), store))


def test_counts_match_the_manifest_and_files(data):
    manifest = data.manifest
    assert manifest["documents"] == DOCUMENTS
    assert data.tokens.dtype == np.uint16
    assert len(data.tokens) == manifest["tokens"] == data.doc_offsets[-1]
    assert len(data.doc_offsets) == DOCUMENTS + 1 and len(data.documents) == DOCUMENTS
    assert manifest["validation"]["tokens"] == 5000 and len(data.validation()) == 5000
    assert manifest["train"]["start"] == data.doc_offsets[manifest["validation"]["documents"]]
    assert manifest["train"]["tokens"] == manifest["tokens"] - manifest["train"]["start"]
    assert manifest["train"]["documents"] + manifest["validation"]["documents"] == DOCUMENTS
    assert manifest["sha256"]["tokens.bin"] == file_sha256(data.path / "tokens.bin")
    assert manifest["tokenizer"]["vocab_size"] == 600 == data.tokenizer.get_vocab_size()
    # every document ends with the end-of-document token, which appears nowhere else
    eod_positions = np.flatnonzero(np.asarray(data.tokens) == data.eod_id)
    assert np.array_equal(eod_positions, np.asarray(data.doc_offsets[1:]) - 1)


def test_round_trip_decodes_every_document(data):
    texts = _source_texts(DOCUMENTS)
    assert sorted(data.documents.tolist()) == list(range(DOCUMENTS))
    for stored, source in enumerate(data.documents):
        ids = data.document(stored)
        assert ids[-1] == data.eod_id
        assert data.tokenizer.decode(ids[:-1].tolist(), skip_special_tokens=False) == texts[source]


def test_budgets_are_exact_and_nested(data):
    largest = data.train_tokens
    sizes = [1, 999, 4097, 12345, largest // 2, largest]
    budgets = {u: np.asarray(data.budget(u)) for u in sizes}
    for u, tokens in budgets.items():
        assert len(tokens) == u
        assert np.array_equal(tokens, budgets[largest][:u])
    with pytest.raises(InputError, match=f"exceeds the {largest} training tokens"):
        data.budget(largest + 1)


def test_validation_documents_never_appear_in_training(data):
    n_validation = data.manifest["validation"]["documents"]
    validation_sources = set(data.documents[:n_validation].tolist())
    training_sources = set(data.documents[n_validation:].tolist())
    assert validation_sources and not validation_sources & training_sources
    # the validation split is the start of its documents; the largest budget is exactly the training documents
    validation_docs = np.concatenate([data.document(i) for i in range(n_validation)])
    assert np.array_equal(data.validation(), validation_docs[:5000])
    training_docs = np.concatenate([data.document(i) for i in range(n_validation, DOCUMENTS)])
    assert np.array_equal(data.budget(data.train_tokens), training_docs)


def test_tokenizer_was_trained_on_training_documents_only(data):
    sample = data.manifest["tokenizer"]["training_sample"]
    n_validation = data.manifest["validation"]["documents"]
    assert sample["characters"] >= 150_000 and DOCUMENTS - sample["documents"] >= n_validation
    # retraining on exactly the last `sample` stored documents reproduces the saved tokenizer
    texts = _source_texts(DOCUMENTS)
    sampled = [texts[data.documents[i]] for i in range(DOCUMENTS - 1, DOCUMENTS - 1 - sample["documents"], -1)]
    retrained = train_tokenizer(sampled, TokenizerConfig.model_validate(SMALL["tokenizer"]))
    assert retrained.get_vocab() == data.tokenizer.get_vocab()


def test_same_config_reuses_and_num_proc_does_not_change_the_output(data, store, tmp_path):
    success_time = (data.path / "SUCCESS").stat().st_mtime_ns
    again = tokenize(TokenizeConfig.model_validate({**SMALL, "num_proc": 2}), store)
    assert again == data.path and (again / "SUCCESS").stat().st_mtime_ns == success_time
    fresh = TokenData(tokenize(TokenizeConfig.model_validate({**SMALL, "num_proc": 2}), tmp_path))
    assert fresh.path.name == data.path.name
    assert fresh.manifest["sha256"] == data.manifest["sha256"]


def test_another_seed_picks_other_validation_documents(data, tmp_path):
    other = TokenData(tokenize(TokenizeConfig.model_validate({**SMALL, "seed": 4}), tmp_path))
    assert other.path.name != data.path.name
    n = data.manifest["validation"]["documents"]
    assert set(other.documents[:n].tolist()) != set(data.documents[:n].tolist())


def test_sampler_over_a_budget_only_sees_that_budget(data):
    budget = data.budget(20_000)
    sampler = SequenceSampler(budget, seq_len=64, batch_size=8, total_tokens=64 * 700, seed=0)
    seen = np.concatenate([b.tokens[:, 1:].ravel() for b in sampler.batches()])
    assert len(seen) == 64 * 700
    assert np.isin(seen, np.asarray(budget)).all()


def test_local_jsonl_with_a_text_field_and_a_given_tokenizer(data, tmp_path):
    rows = [{"id": i, "body": f"document {i}: " + "word " * (i % 7) + "<|endoftext|> inside"} for i in range(300)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = TokenizeConfig.model_validate(
        {
            "corpus": {"source": "local", "path": str(corpus), "text_field": "body"},
            "tokenizer": {"path": str(data.path / "tokenizer.json"), "dtype": "uint32"},
            "validation_tokens": 500,
        }
    )
    local = TokenData(tokenize(config, tmp_path / "store"))
    assert local.tokens.dtype == np.uint32 and local.manifest["documents"] == 300
    assert local.manifest["tokenizer"]["trained"] is False
    for stored in (0, 1, 299):
        ids = local.document(stored)
        assert np.count_nonzero(ids == local.eod_id) == 1  # the literal "<|endoftext|>" is plain text
        assert local.tokenizer.decode(ids[:-1].tolist()) == rows[local.documents[stored]]["body"]


# --- bad input: a clear error, nothing left in the store ---------------------------------------


def _fails(store: Path, settings: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        tokenize(TokenizeConfig.model_validate(settings), store)
    assert _leftovers(store) == []


def test_missing_file(tmp_path):
    _fails(tmp_path, {"corpus": {"source": "local", "path": str(tmp_path / "nope.jsonl")}}, "does not exist")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    _fails(tmp_path, {"corpus": {"source": "local", "path": str(tmp_path / "empty.jsonl")}}, "empty")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n' * 5)
    settings = {"corpus": {"source": "local", "path": str(tmp_path / "blank.jsonl")}, "tokenizer": {"vocab_size": 300}}
    _fails(tmp_path, settings, "all 5 documents are empty")


def test_missing_text_field(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"content": "hello"}\n')
    _fails(tmp_path, {"corpus": {"source": "local", "path": str(tmp_path / "c.jsonl")}}, r"'text' is not a column.*\['content'\]")


def test_validation_larger_than_the_corpus_leaves_nothing_half_written(tmp_path):
    _fails(tmp_path, {**SMALL, "corpus": {"max_documents": 5}, "validation_tokens": "10M"}, "leaves no training documents; the corpus has")


@pytest.mark.parametrize(
    ("tokenizer", "message"),
    [({"vocab_size": 200}, "vocab_size: 200 is too small"), ({"vocab_size": 70000, "dtype": "uint16"}, "does not fit dtype uint16")],
)
def test_vocabulary_outside_what_the_dtype_holds(tokenizer, message):
    with pytest.raises(ValidationError, match=message):
        TokenizeConfig.model_validate({"tokenizer": tokenizer})


def test_given_tokenizer_too_large_for_uint16(tmp_path):
    from tokenizers import models

    big = Tokenizer(models.WordLevel({f"w{i}": i for i in range(70_000)} | {"<|endoftext|>": 70_000}, unk_token="w0"))
    big.save(str(tmp_path / "big.json"))
    _fails(tmp_path, {"tokenizer": {"path": str(tmp_path / "big.json"), "dtype": "uint16"}}, "70001 tokens does not fit uint16")


def test_bad_token_counts_name_the_field():
    with pytest.raises(ValidationError, match="validation_tokens: '12x' is not a quantity"):
        TokenizeConfig.model_validate({"validation_tokens": "12x"})
    assert TokenizeConfig.model_validate({"validation_tokens": "1.5K"}).validation_tokens == 1500


def test_atomic_directory_removes_everything_on_failure(tmp_path):
    final = tmp_path / "stage" / "x-123"
    with pytest.raises(RuntimeError), atomic_directory(final) as work:
        (work / "half.bin").write_bytes(b"12")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path / "stage") == []
    with atomic_directory(final) as work:
        (work / "done.bin").write_bytes(b"12")
    assert is_complete(final) and os.listdir(tmp_path / "stage") == ["x-123"]
