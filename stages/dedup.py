"""The dedup stage: a corpus -> the documents kept after removing exact and near-duplicates.

Exact duplicates are documents whose text is identical to an earlier one's (SHA-256 of the UTF-8
text); near-duplicates are clusters of documents whose word-shingle Jaccard similarity, estimated
by MinHash, reaches `near_duplicates` (`stages.near_duplicates`). Each keeps its first document in
source order. The stage runs over the whole corpus before the tokenize stage draws its split, so
duplicates are removed inside the training region (and inside the validation split: a cluster
keeps one document, which lands on one side). The tokenize stage reads the kept list, reuses the
signatures for its split's clusters, and counts the tokens removed in its manifest.

Output, `<store>/dedup/<name>-<hash>/` (the hash covers the corpus, the dedup and MinHash settings):
  kept.npy          int64: the source-order indices of the documents kept, ascending
  signatures.npy    uint32 (documents x permutations): the MinHash signature of every document
  manifest.json     settings, counts (documents, removed as exact and as near duplicates, characters), versions
  SUCCESS           written last
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaling.errors import InputError
from stages.artifacts import artifact_dir, atomic_directory, is_complete, step_hash
from stages.corpus import corpus_identity, load_corpus, read_texts
from stages.near_duplicates import clusters, signatures

if TYPE_CHECKING:
    from stages.tokenize import TokenizeConfig

STAGE = "dedup"
FORMAT_VERSION = 1
KEPT = "kept.npy"
SIGNATURES = "signatures.npy"


class DedupConfig(BaseModel):
    """Which duplicates the dedup step removes before the split."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="remove documents whose text is identical to an earlier document's")
    near_duplicates: float | None = Field(
        0.8, gt=0, le=1, description="remove all but the first document of each cluster whose word-shingle Jaccard "
        "similarity (estimated by MinHash) reaches this; null: exact duplicates only",
    )

    @model_validator(mode="after")
    def _removes_something(self) -> DedupConfig:
        if not self.exact and self.near_duplicates is None:
            raise InputError("dedup", "exact: false with near_duplicates: null removes nothing; set one, or leave dedup out")
        return self


def dedup_key(config: TokenizeConfig) -> dict:
    """Everything the dedup artifact depends on: the corpus, the dedup and MinHash settings, the versions."""
    return {
        "format": FORMAT_VERSION,
        "corpus": config.corpus.model_dump(mode="json"),
        "source": corpus_identity(config.corpus),
        "dedup": config.dedup.model_dump(mode="json") if config.dedup else None,
        "minhash": config.minhash.model_dump(mode="json"),
        "versions": {"datasets": version("datasets"), "datasketch": version("datasketch")},
    }


def dedup_hash(config: TokenizeConfig) -> str:
    """The hash naming the dedup artifact of a tokenize config (which must have `dedup` set)."""
    return step_hash(dedup_key(config))


def dedup(config: TokenizeConfig, store: Path, progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Run the stage (or reuse its finished artifact) for `config.dedup` and return the artifact directory."""
    if config.dedup is None:
        raise InputError("dedup", "is not set in this config; there is nothing to deduplicate")
    key = dedup_key(config)
    final = artifact_dir(store, STAGE, config.name, step_hash(key))
    if is_complete(final):
        return final
    with atomic_directory(final) as work:
        _build(config, key, work, progress or (lambda phase, done, total: None))
    return final


def _build(config: TokenizeConfig, key: dict, work: Path, progress: Callable[[str, int, int], None]) -> None:
    started = time.perf_counter()
    dataset = load_corpus(config.corpus, work / "cache")
    total = len(dataset)
    first_of: dict[bytes, int] = {}
    exact = np.arange(total)
    characters = np.zeros(total, dtype=np.int64)

    def texts():
        for index, text in enumerate(read_texts(dataset)):
            characters[index] = len(text)
            if config.dedup.exact:
                exact[index] = first_of.setdefault(hashlib.sha256(text.encode()).digest(), index)
            yield text

    sketches = signatures(texts(), config.minhash, lambda done: progress("finding duplicates", done, total))
    del dataset
    shutil.rmtree(work / "cache")
    unique = np.flatnonzero(exact == np.arange(total))
    kept = unique
    if config.dedup.near_duplicates is not None:
        labels = clusters(sketches[unique], config.dedup.near_duplicates, config.minhash)
        kept = unique[labels == np.arange(len(unique))]
    np.save(work / KEPT, kept.astype(np.int64))
    np.save(work / SIGNATURES, sketches)
    removed = np.setdiff1d(np.arange(total), kept)
    manifest = {
        "name": config.name,
        "hash": step_hash(key),
        "format": FORMAT_VERSION,
        **{name: key[name] for name in ("corpus", "source", "dedup", "minhash", "versions")},
        "documents": total,
        "kept": int(len(kept)),
        "removed": {
            "exact": int(total - len(unique)),
            "near": int(len(unique) - len(kept)),
            "characters": int(characters[removed].sum()),
        },
        "seconds": round(time.perf_counter() - started, 3),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def read_dedup(artifact: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(kept source indices, every document's signature, the manifest) of a finished dedup artifact."""
    artifact = Path(artifact)
    if not is_complete(artifact):
        raise InputError("dedup", f"{str(artifact)!r} is not a finished dedup artifact (no SUCCESS file)")
    return np.load(artifact / KEPT), np.load(artifact / SIGNATURES), json.loads((artifact / "manifest.json").read_text())
