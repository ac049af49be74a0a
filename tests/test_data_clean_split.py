"""The clean split: planted near-duplicates land on one side, contamination is measured exactly, dedup removes
what it should and nothing else, and all of it is deterministic with the seed."""

import json
import os
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from scaling.errors import InputError  # noqa: E402
from stages import contamination  # noqa: E402
from stages.data import TokenData  # noqa: E402
from stages.dedup import read_dedup  # noqa: E402
from stages.split import document_order, regions  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402

VOCABULARY = [f"w{i}" for i in range(4000)]
WORDS = 200  # per document
UNIQUE, CLUSTERS, COPIES = 40, 10, 3  # unique documents; planted clusters of a base and COPIES edited copies


def _document(rng) -> list[str]:
    return [VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), WORDS)]


def _edited(words: list[str], share: float, rng) -> list[str]:
    """A copy with `share` of its words replaced by random ones."""
    copy = list(words)
    for position in rng.choice(len(copy), int(share * len(copy)), replace=False):
        copy[position] = VOCABULARY[rng.integers(len(VOCABULARY))]
    return copy


def _text(words: list[str]) -> str:
    return "\n".join(" ".join(words[i : i + 12]) for i in range(0, len(words), 12))


def _write(path: Path, documents: list[list[str]]) -> Path:
    path.write_text("".join(json.dumps({"text": _text(words)}) + "\n" for words in documents))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list[int]]:
    """A JSONL corpus: UNIQUE random documents, then CLUSTERS groups of a base and COPIES copies with 8% of the
    words replaced (word 5-gram Jaccard about 0.5 to the base); the cluster of each source document."""
    rng = np.random.default_rng(7)
    documents, cluster = [], []
    for index in range(UNIQUE):
        documents.append(_document(rng))
        cluster.append(index)
    for group in range(CLUSTERS):
        base = _document(rng)
        for copy in range(COPIES + 1):
            documents.append(base if copy == 0 else _edited(base, 0.08, rng))
            cluster.append(UNIQUE + group)
    order = rng.permutation(len(documents))  # planted copies scattered through the source order
    path = _write(tmp_path_factory.mktemp("corpus") / "planted.jsonl", [documents[i] for i in order])
    return path, [cluster[i] for i in order]


def _config(corpus: Path, **changes) -> TokenizeConfig:
    settings = {
        "corpus": {"source": "local", "path": str(corpus)},
        "tokenizer": {"vocab_size": 400, "training_characters": "30K"},
        "validation_tokens": "8K",
        "seed": 5,
    }
    return TokenizeConfig.model_validate({**settings, **changes})


def _sides(data: TokenData, cluster: list[int]) -> dict[int, set[str]]:
    """The sides (validation, held out, train) each cluster's stored documents are on."""
    validation, train = data.manifest["validation"]["documents"], data.manifest["train"]["documents"]
    first_train = data.manifest["documents"] - train
    sides: dict[int, set[str]] = {}
    for stored, source in enumerate(data.documents.tolist()):
        side = "validation" if stored < validation else "train" if stored >= first_train else "held out"
        sides.setdefault(cluster[source], set()).add(side)
    return sides


def test_planted_near_duplicates_land_on_one_side_and_nothing_is_found(planted, tmp_path):
    corpus, cluster = planted
    data = TokenData(tokenize(_config(corpus), tmp_path))
    split = data.manifest["split"]
    assert split == {"near_duplicates": 0.2, "clusters": UNIQUE + CLUSTERS, "documents_in_clusters": CLUSTERS * (COPIES + 1),
                     "largest_cluster": COPIES + 1}  # fmt: skip
    sides = _sides(data, cluster)
    planted_sides = [sides[UNIQUE + group] for group in range(CLUSTERS)]
    assert {"validation"} in planted_sides  # the seed puts a planted cluster in validation: the case under test
    assert all(len(side - {"held out"}) == 1 for side in planted_sides)
    measured = data.manifest["contamination"]
    assert measured["window_tokens"] == 64 and measured["windows"] > 1000
    assert measured["found"] == 0 and measured["overall"] == 0.0
    assert set(measured["within"].values()) == {0.0}


def test_without_clusters_copies_straddle_the_split_and_the_overlap_is_found(planted, tmp_path):
    corpus, cluster = planted
    data = TokenData(tokenize(_config(corpus, split={"near_duplicates": None}), tmp_path))
    assert data.manifest["split"]["clusters"] == len(cluster)
    straddling = [group for group, side in _sides(data, cluster).items() if {"validation", "train"} <= side]
    assert straddling  # with this seed a planted cluster has members on both sides
    measured = data.manifest["contamination"]
    assert 0 < measured["found"] < measured["windows"] and measured["overall"] == measured["found"] / measured["windows"]
    # the shares at the manifest's powers of two rise with the budget to the overall share
    shares = [measured["within"][key] for key in sorted(measured["within"], key=int)]
    assert shares == sorted(shares) and shares[-1] <= measured["overall"]
    budgets = [int(key) for key in measured["within"]] + [data.train_tokens]
    exact = contamination.shares_at(data.path, budgets)
    assert exact[data.train_tokens] == measured["overall"]
    assert all(exact[int(key)] == value for key, value in measured["within"].items())


def test_contamination_finds_planted_windows_at_their_exact_budgets(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 1000, 100), rng.integers(1, 1000, 80)  # two validation documents; 0 is end-of-document
    filler = [rng.integers(2000, 3000, n) for n in (500, 300, 200)]  # tokens no validation window holds
    validation = np.concatenate([a, [0], b, [0]])
    train = np.concatenate([filler[0], a[10:80], filler[1], b[:64], filler[2], a[10:80]])
    path = tmp_path / "tokens.bin"
    np.concatenate([validation, train]).astype(np.uint16).tofile(path)
    windows = (100 - 64 + 1) + (80 - 64 + 1)  # none crosses an end-of-document token
    expected = np.array([564, 565, 566, 567, 568, 569, 570, 934])  # A[10+j:74+j] ends at 500+j+64; B[:64] at 934
    for chunk in (contamination.CHUNK, 37):  # one chunk, and many that cut windows at their edges
        monkeypatch.setattr(contamination, "CHUNK", chunk)
        found_windows, ends = contamination.measure(path, np.uint16, len(validation), len(validation), eod=0)
        assert found_windows == windows and np.array_equal(ends, expected)
    assert [contamination.share(ends, windows, budget) for budget in (563, 564, 570, 933, 934, len(train))] == [
        0, 1 / windows, 7 / windows, 7 / windows, 8 / windows, 8 / windows]  # fmt: skip


def test_document_order_keeps_clusters_together_and_is_the_plain_shuffle_without_them():
    assert np.array_equal(document_order(np.arange(50), seed=3), np.random.default_rng(3).permutation(50))
    labels = np.array([0, 1, 0, 3, 1, 0, 6, 7])
    order = document_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(8))
    runs = [label for i, label in enumerate(labels[order]) if i == 0 or label != labels[order][i - 1]]
    assert sorted(runs) == [0, 1, 3, 6, 7]  # each cluster is one stretch of the order
    assert np.array_equal(order, document_order(labels, seed=3))


def test_training_starts_at_the_next_cluster_after_the_cut():
    offsets = np.array([0, 10, 20, 30, 40, 50, 60])
    labels = np.array([4, 4, 4, 8, 9, 9])  # the cut at 15 tokens falls in cluster 4's second document
    layout = regions(offsets, labels, validation_tokens=15, sample_documents=1)
    assert layout["validation"] == {"start": 0, "tokens": 15, "documents": 2}
    assert layout["held_out"] == {"tokens": 15, "documents": 1}
    assert layout["train"] == {"start": 30, "tokens": 30, "documents": 3}
    with pytest.raises(InputError, match="leaves no training documents"):
        regions(offsets, np.array([4, 4, 4, 4, 4, 4]), 15, 1)
    assert regions(offsets, labels, 15, sample_documents=3)["train"]["documents"] == 3  # the whole training region
    with pytest.raises(InputError, match="reaches into the 4 documents the tokenizer was trained on"):
        regions(offsets, labels, 15, 4)  # one of them held out: the tokenizer must never see it


def test_dedup_removes_exact_and_near_duplicates_and_nothing_else(tmp_path):
    rng = np.random.default_rng(11)
    unique = [_document(rng) for _ in range(40)]
    similar = [_edited(unique[i], 0.08, rng) for i in range(5)]  # Jaccard about 0.5 to 0..4: kept at 0.8
    near = [_edited(unique[i], 0.005, rng) for i in range(5, 10)]  # one word replaced, about 0.95 to 5..9: removed
    exact = [list(unique[i]) for i in range(10, 13)] + [list(near[0])]  # copies of 10..12 and of a near copy
    documents = unique + similar + near + exact
    corpus = _write(tmp_path / "dup.jsonl", documents)
    config = _config(corpus, dedup={"exact": True, "near_duplicates": 0.8}, validation_tokens="4K")
    data = TokenData(tokenize(config, tmp_path / "store"))
    (artifact,) = (tmp_path / "store" / "dedup").iterdir()
    kept, signatures, manifest = read_dedup(artifact)
    removed = list(range(45, 54))  # the near copies 45..49, the exact copies 50..53
    assert kept.tolist() == [i for i in range(len(documents)) if i not in removed]
    assert manifest["removed"] == {"exact": 4, "near": 5, "characters": sum(len(_text(documents[i])) for i in removed)}
    assert signatures.shape == (len(documents), 128) and signatures.dtype == np.uint32
    assert sorted(data.documents.tolist()) == kept.tolist()
    tokens = sum(len(data.tokenizer.encode(_text(documents[i])).ids) + 1 for i in removed)  # +1: end of document
    assert data.manifest["dedup"] == {"artifact": artifact.name, "documents": 9, "exact": 4, "near": 5, "tokens": tokens}
    assert data.manifest["tokens"] == sum(len(data.tokenizer.encode(_text(documents[i])).ids) + 1 for i in kept)


def test_the_same_seed_gives_the_same_artifacts_and_another_moves_only_the_order(planted, tmp_path):
    corpus, cluster = planted
    config = _config(corpus, dedup={"near_duplicates": 0.8})
    first, second = (TokenData(tokenize(config, tmp_path / name)) for name in ("a", "b"))
    assert first.path.name == second.path.name and first.manifest["sha256"] == second.manifest["sha256"]
    for name in ("kept.npy", "signatures.npy"):
        (one,), (two,) = ((tmp_path / store / "dedup").iterdir() for store in ("a", "b"))
        assert np.array_equal(np.load(one / name), np.load(two / name))
    other = TokenData(tokenize(config.model_copy(update={"seed": 6}), tmp_path / "a"))
    assert other.path.name != first.path.name and other.manifest["split"] == first.manifest["split"]
    assert not np.array_equal(other.documents, first.documents)
    assert all(len(side - {"held out"}) == 1 for side in _sides(other, cluster).values())
