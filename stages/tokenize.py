"""The tokenize stage: corpus -> one flat token file, a document index, a tokenizer and a manifest.

With `dedup` set, the documents are first those the dedup stage kept (`stages.dedup`). They are
grouped into near-duplicate clusters (`stages.near_duplicates`), shuffled once with the config's
seed, a cluster's documents together, and written in that order, each followed by the
end-of-document token. The first `validation_tokens` tokens are the validation split (whole
documents, the last one cut); the training region starts at the next cluster, so no cluster has
documents on both sides (`stages.split`). A unique-token budget U is then the first U tokens of
the training region, so budgets are exact to the token and nested (see `stages.data`). The
tokenizer is trained on documents at the end of that order, never on validation or held-out
ones. Last, the share of validation windows the training region holds verbatim is measured
(`stages.contamination`).

Output, `<store>/tokenize/<name>-<hash>/`:
  tokens.bin        every token, uint16 (or uint32 when the vocabulary needs it); numpy.memmap
  doc_offsets.npy   int64, documents + 1 entries: document i is tokens[offsets[i]:offsets[i+1]]
  documents.npy     int64: the source-order index of each stored document
  tokenizer.json    the tokenizer
  contamination.npy int64, sorted: where the first training occurrence of each found validation window ends
  manifest.json     source, tokenizer, counts, regions, split, dedup counts, contamination, hashes, versions
  SUCCESS           written last
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from importlib.metadata import version
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaling.errors import InputError
from stages import contamination
from stages.artifacts import artifact_dir, atomic_directory, file_sha256, is_complete, step_hash
from stages.corpus import CorpusConfig, corpus_identity, load_corpus, read_texts
from stages.dedup import DedupConfig, dedup, dedup_hash, read_dedup
from stages.fields import Count, StoreName
from stages.mapped_pages import corpus_files, release_mapped_pages
from stages.pool_config import PER_POOL_FIELDS, PoolConfig, pool_names
from stages.near_duplicates import MinHashConfig, clusters, signatures
from stages.split import SplitConfig, cluster_counts, document_order, regions
from stages.tokenizer import TokenizerConfig, eod_id, load_tokenizer, token_dtype, train_tokenizer

STAGE = "tokenize"
FORMAT_VERSION = 2  # 2: near-duplicate clusters on one side of the split, held-out tokens, contamination
CHUNK_BYTES = 8_000_000  # text per process per `datasets.map` call: bounds the memory of each call
MAP_BATCH_SIZE = 256

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total): phases are 'finding duplicates', 'reading', 'training tokenizer', 'tokenizing'."""


class TokenizeConfig(BaseModel):
    """The corpus/tokenizer section of a sweep; everything but `num_proc` goes into the artifact hash."""

    model_config = ConfigDict(extra="forbid")

    name: StoreName = Field("corpus", description="the artifact's name in the store")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    validation_tokens: Count = Field(100_000, description="tokens of the fixed validation split")
    seed: int = Field(0, description="seed of the document shuffle (validation choice and training order)")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig, description="how near-duplicates are found (split and dedup)")
    split: SplitConfig = Field(default_factory=SplitConfig, description="near-duplicate clusters kept whole on one side of the split")
    dedup: DedupConfig | None = Field(None, description="remove exact and near-duplicates first (its own step); null: keep all")
    num_proc: int = Field(1, ge=1, description="processes for tokenizing; does not change the output")
    pools: list[PoolConfig] | None = Field(
        None, min_length=1, description="several named pools, each its own corpus and validation split, one tokenizer "
        "trained on their union (`stages.pools`); null: one corpus (the settings above)"
    )
    eval: str | None = Field(None, description="with pools: the pool whose validation loss is a run's val_loss; default: the first")

    @model_validator(mode="after")
    def _pools_consistent(self) -> TokenizeConfig:
        if self.pools is None:
            if self.eval is not None:
                raise InputError("eval", f"{self.eval!r} names a pool, but data.pools is not given")
            return self
        for field in PER_POOL_FIELDS:
            if field in self.model_fields_set:
                raise InputError(field, "is set per pool (data.pools.<i>) when data.pools is given" if field != "dedup"
                                 else "is not supported with data.pools yet; leave it out")
        names = pool_names(self.pools)
        for index, name in enumerate(names):
            if name in names[:index]:
                raise InputError(f"pools.{index}.name", f"{name!r} is used by pools.{names.index(name)} too; pool names must be unique")
        if self.eval is not None and self.eval not in names:
            raise InputError("eval", f"{self.eval!r} is not a pool; pools: {', '.join(names)}")
        return self

    @property
    def eval_pool(self) -> str | None:
        """The pool a run's val_loss is scored on (None for a one-pool corpus)."""
        return None if self.pools is None else self.eval or self.pools[0].name

    def hashed(self) -> dict:
        """The settings the artifact depends on: all but `num_proc` and `eval` (and `pools` when unset, as before pools)."""
        return self.model_dump(mode="json", exclude={"num_proc", "eval"} | ({"pools"} if self.pools is None else set()))


def _no_progress(phase: str, done: int, total: int) -> None:
    """The default progress callback: report nothing."""


def tokenize_key(config: TokenizeConfig) -> dict:
    """Everything the artifact depends on: the resolved config, the input's identity, the versions."""
    key = {
        "format": FORMAT_VERSION,
        "config": config.hashed(),
        "corpus": corpus_identity(config.corpus) if config.pools is None else {pool.name: corpus_identity(pool.corpus) for pool in config.pools},
        "versions": {"datasets": version("datasets"), "tokenizers": version("tokenizers"), "datasketch": version("datasketch")},
        "dedup": dedup_hash(config) if config.dedup else None,
    }
    if config.tokenizer.path is not None:
        load_tokenizer(config.tokenizer)  # a bad tokenizer file fails before any work
        key["tokenizer_sha256"] = file_sha256(Path(config.tokenizer.path))
    return key


def tokenize_hash(config: TokenizeConfig) -> str:
    """The hash naming the artifact this config produces (the pipeline's tokenize step uses it too)."""
    return step_hash(tokenize_key(config))


def tokenize_path(config: TokenizeConfig, store: Path) -> Path:
    """The artifact directory this config produces in `store` (finished or not)."""
    return artifact_dir(store, STAGE, config.name, tokenize_hash(config))


def tokenize(config: TokenizeConfig, store: Path, progress: Progress | None = None, deduplicated: Path | None = None) -> Path:
    """Run the stage (or reuse its finished artifact) and return the artifact directory.

    With `config.dedup` set, `deduplicated` is the dedup artifact to read; when None, the dedup stage
    is run (or reused) in the same store first.
    """
    key = tokenize_key(config)
    final = artifact_dir(store, STAGE, config.name, step_hash(key))
    if is_complete(final):
        return final
    progress = progress or _no_progress
    with _quiet_libraries():
        if config.pools is not None:
            from stages.pools import build_pools  # it builds on this module

            with atomic_directory(final) as work:
                build_pools(config, key, work, progress)
            return final
        if config.dedup is not None and deduplicated is None:
            deduplicated = dedup(config, store, progress)
        with atomic_directory(final) as work:
            _build(config, key, work, progress, deduplicated)
    return final


class Prepared(NamedTuple):
    """A corpus read, its near-duplicate clusters found and its documents put in their stored order."""

    dataset: Any
    order: np.ndarray  # source indices of the kept documents, in stored order
    labels: np.ndarray  # each stored document's cluster label
    removed: dict | None  # the dedup stage's removal counts
    seconds: dict  # phase -> seconds so far
    started: float  # when reading began
    clustering: float  # when reading ended and clustering began


def _build(config: TokenizeConfig, key: dict, work: Path, progress: Progress, deduplicated: Path | None) -> None:
    prepared = prepare(config, key["dedup"], work, progress, deduplicated)
    sample = {"documents": 0, "characters": 0}
    if config.tokenizer.path is None:
        progress("training tokenizer", 0, 1)
        tokenizer = train_tokenizer(training_sample(prepared, config.tokenizer.training_characters, sample), config.tokenizer)
        progress("training tokenizer", 1, 1)
    else:
        tokenizer = load_tokenizer(config.tokenizer)
    write_artifact(config, key, work, progress, prepared, tokenizer, sample)


def prepare(config: TokenizeConfig, dedup_key: str | None, work: Path, progress: Progress, deduplicated: Path | None) -> Prepared:
    """Read the corpus (cached under `work/cache`), find its near-duplicate clusters and order its documents."""
    started = time.perf_counter()
    progress("reading", 0, 1)
    dataset = load_corpus(config.corpus, work / "cache")
    progress("reading", 1, 1)
    clustering = time.perf_counter()
    kept, sketches, removed = _deduplicated(deduplicated, dedup_key, len(dataset))
    labels = _clusters(config, dataset, kept, sketches, progress)
    positions = document_order(labels, config.seed)
    order, labels = kept[positions], labels[positions]
    return Prepared(dataset, order, labels, removed, {"near_duplicates": time.perf_counter() - clustering}, started, clustering)


def training_sample(prepared: Prepared, characters: int, sample: dict) -> Iterator[str]:
    """The tokenizer's training texts: documents at the end of the stored order (never validation ones)."""
    return _training_sample(prepared.dataset, prepared.order, characters, sample)


def write_artifact(config: TokenizeConfig, key: dict, work: Path, progress: Progress, prepared: Prepared, tokenizer, sample: dict) -> None:
    """Tokenize the prepared corpus with `tokenizer` and write the artifact's files and manifest into `work`."""
    dataset, order, labels, removed, seconds, started, clustering = prepared
    seconds = dict(seconds)
    tokenizer.save(str(work / "tokenizer.json"))
    eod = eod_id(tokenizer, config.tokenizer)
    dtype = token_dtype(tokenizer.get_vocab_size(), config.tokenizer)

    with _single_threaded_tokenizers():
        every_length, tokens_sha = _write_tokens(dataset, order, tokenizer, eod, dtype, work, config.num_proc, progress)
    del dataset
    shutil.rmtree(work / "cache")
    lengths = every_length[order]
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    layout = regions(offsets, labels, config.validation_tokens, sample["documents"])
    np.save(work / "doc_offsets.npy", offsets)
    np.save(work / "documents.npy", order.astype(np.int64))
    seconds["tokenizing"] = time.perf_counter() - clustering - seconds["near_duplicates"]

    measured = time.perf_counter()
    windows, ends = contamination.measure(work / "tokens.bin", dtype, config.validation_tokens, layout["train"]["start"], eod)
    np.save(work / contamination.FILE, ends)
    seconds["contamination"] = time.perf_counter() - measured
    if removed is not None:
        removed["tokens"] = int(every_length.sum() - lengths.sum())

    total_seconds = time.perf_counter() - started
    manifest = {
        **manifest_head(config, key, tokenizer, sample),
        "dtype": dtype.name,
        "documents": int(len(lengths)),
        "tokens": int(offsets[-1]),
        **layout,
        "split": {"near_duplicates": config.split.near_duplicates, **cluster_counts(labels)},
        "dedup": removed,
        "contamination": contamination.summary(ends, windows, layout["train"]["tokens"]),
        "sha256": {
            name: tokens_sha if name == "tokens.bin" else file_sha256(work / name)
            for name in ("tokens.bin", "doc_offsets.npy", "documents.npy", "tokenizer.json", contamination.FILE)
        },
        "seconds": round(total_seconds, 3),
        "phase_seconds": {phase: round(value, 3) for phase, value in seconds.items()},
        "tokens_per_second": round(int(offsets[-1]) / total_seconds, 1),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def manifest_head(config: TokenizeConfig, key: dict, tokenizer, sample: dict) -> dict:
    """The manifest's first entries: name, hash, format, config, source, versions and the tokenizer."""
    return {
        "name": config.name,
        "hash": step_hash(key),
        "format": FORMAT_VERSION,
        "config": key["config"],
        "source": key["corpus"],
        "versions": key["versions"],
        "tokenizer": {
            "trained": config.tokenizer.path is None,
            "vocab_size": tokenizer.get_vocab_size(),
            "eod_token": config.tokenizer.eod_token,
            "eod_id": eod_id(tokenizer, config.tokenizer),
            "training_sample": sample,
            "file_sha256": key.get("tokenizer_sha256"),
        },
    }


def _deduplicated(artifact: Path | None, expected: str | None, documents: int) -> tuple[np.ndarray, np.ndarray | None, dict | None]:
    """(the source indices kept, their signatures if the dedup stage made them, its removal counts); InputError
    when the artifact is not the one the config's dedup settings make (hash `expected`)."""
    if artifact is None:
        return np.arange(documents), None, None
    kept, sketches, manifest = read_dedup(artifact)
    if manifest["hash"] != expected:
        raise InputError("dedup", f"{str(artifact)!r} was made with other settings (hash {manifest['hash']}, expected {expected})")
    removed = manifest["removed"]
    counts = {"artifact": artifact.name, "documents": documents - len(kept), "exact": removed["exact"], "near": removed["near"]}
    return kept, sketches[kept], counts


def _clusters(config: TokenizeConfig, dataset, kept: np.ndarray, sketches: np.ndarray | None, progress: Progress) -> np.ndarray:
    """The near-duplicate cluster of each kept document (a label per document); every document alone when
    the split does not cluster. Signatures are the dedup stage's when it ran, else computed here."""
    if config.split.near_duplicates is None:
        return np.arange(len(kept))
    if sketches is None:
        sketches = signatures(read_texts(dataset), config.minhash, lambda done: progress("finding duplicates", done, len(kept)))
    return clusters(sketches, config.split.near_duplicates, config.minhash)


def _training_sample(dataset, order: np.ndarray, characters: int, sample: dict) -> Iterator[str]:
    """The texts of the documents at the end of `order`, last first, until `characters` are reached; counts into `sample`."""
    for text in read_texts(dataset, order[::-1], block=32):  # a random read of a row faults in much of its record batch
        sample["documents"] += 1
        sample["characters"] += len(text)
        yield text
        if sample["characters"] >= characters:
            return


def _encode(batch: dict, tokenizer, eod: int, dtype: str, corpus_files: set[str]) -> dict:
    """`datasets.map` function: token ids of each document followed by the end-of-document token.

    Special-token strings inside a document are encoded as plain text, so the end-of-document id
    only ever marks a document's end (the setting does not survive pickling, hence set here). The
    corpus pages the batch was read from are released afterwards (`_release_mapped_pages`).
    """
    tokenizer.encode_special_tokens = True
    encodings = tokenizer.encode_batch_fast([text or "" for text in batch["text"]], add_special_tokens=False)
    release_mapped_pages(corpus_files)
    return {"ids": [np.array([*encoding.ids, eod], dtype=dtype) for encoding in encodings]}


def _write_tokens(dataset, order, tokenizer, eod, dtype, work, num_proc, progress) -> tuple[np.ndarray, str]:
    """Tokenize every document and write tokens.bin with the documents in `order` (those the dedup stage
    kept); return every document's length (in source order) and the file's SHA-256.

    Pass 1 tokenizes the corpus in file order, chunk by chunk, into a scratch file: each chunk holds
    about CHUNK_BYTES of text per process (dealt out so each process gets as many bytes) and reads
    one stretch of the memory-mapped corpus, so memory stays bounded whatever the corpus size.
    Pass 2 copies each document's tokens into tokens.bin in `order` with positioned reads, so the
    shuffle maps neither the corpus nor the tokens into memory.
    """
    import datasets
    import pyarrow.compute as pc

    sizes = pc.binary_length(dataset.data.column("text")).fill_null(0).to_numpy()
    features = datasets.Features({"ids": datasets.List(datasets.Value(dtype.name))})
    mapped = corpus_files(dataset)
    scratch = work / "cache" / "tokens-in-file-order.bin"
    lengths = []
    progress("tokenizing", 0, len(dataset))
    with open(scratch, "wb") as out:
        for start, end in _chunks(sizes, CHUNK_BYTES * num_proc):
            processes = min(num_proc, end - start)
            dealt = _deal(sizes[start:end], processes)
            encoded = dataset.select(np.arange(start, end)[dealt]).map(
                _encode,
                batched=True,
                batch_size=MAP_BATCH_SIZE,
                num_proc=processes if processes > 1 else None,
                remove_columns=["text"],
                features=features,
                fn_kwargs={"tokenizer": tokenizer, "eod": eod, "dtype": dtype.name, "corpus_files": mapped},
                cache_file_name=str(work / "cache" / f"tokens-{start}.arrow"),
                load_from_cache_file=False,
                new_fingerprint=f"tokens-{start}",
            )
            for array in encoded.data.column("ids").take(np.argsort(dealt)).chunks:
                out.write(memoryview(array.flatten().to_numpy()))
                lengths.append(array.value_lengths().to_numpy())
            for cache_file in encoded.cache_files:
                os.remove(cache_file["filename"])
            del encoded
            progress("tokenizing", end, len(dataset))
    lengths = np.concatenate(lengths).astype(np.int64)
    digest = _shuffle_documents(scratch, work / "tokens.bin", lengths, order, dtype.itemsize)
    os.remove(scratch)
    return lengths, digest


def _shuffle_documents(source: Path, target: Path, lengths: np.ndarray, order: np.ndarray, itemsize: int) -> str:
    """Write the documents of `source` (in file order, `lengths` tokens each) to `target` in `order`; its SHA-256."""
    starts = (np.cumsum(lengths) - lengths) * itemsize
    digest = hashlib.sha256()
    with open(source, "rb") as tokens, open(target, "wb") as out:
        handle = tokens.fileno()
        for document in order.tolist():
            data = os.pread(handle, int(lengths[document]) * itemsize, int(starts[document]))
            out.write(data)
            digest.update(data)
    return digest.hexdigest()




def _chunks(sizes: np.ndarray, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """Consecutive (start, end) document ranges of about `chunk_bytes` of text each (at least one document)."""
    cumulative = np.cumsum(sizes)
    start = 0
    while start < len(sizes):
        base = cumulative[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(cumulative, base + chunk_bytes, side="right")))
        yield start, end
        start = end


def _deal(sizes: np.ndarray, processes: int) -> np.ndarray:
    """An order of the documents whose `processes` contiguous, equal-count shards carry about equal bytes.

    `datasets.map(num_proc=k)` gives each process a contiguous shard; dealing the documents
    largest first, back and forth across the shards, balances a heavy-tailed size distribution.
    """
    if processes == 1:
        return np.arange(len(sizes))
    by_size = np.argsort(-sizes, kind="stable")
    rounds, seat = np.divmod(np.arange(len(sizes)), processes)
    shard = np.where(rounds % 2 == 0, seat, processes - 1 - seat)
    return by_size[np.argsort(shard, kind="stable")]



@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence `datasets` progress bars and warnings (library code never prints)."""
    from datasets.utils import logging as datasets_logging

    bars, verbosity = datasets_logging.is_progress_bar_enabled(), datasets_logging.get_verbosity()
    datasets_logging.disable_progress_bar()
    datasets_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bars:
            datasets_logging.enable_progress_bar()
        datasets_logging.set_verbosity(verbosity)


@contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    """One thread per tokenizing process, so `num_proc` is the parallelism (and forks stay quiet and safe)."""
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
