"""The tokenize stage: corpus -> one flat token file, a document index, a tokenizer and a manifest.

The documents are shuffled once with the config's seed and written in that order, each followed
by the end-of-document token. The first `validation_tokens` tokens are the validation split
(whole documents, the last one cut and its rest used nowhere); the training region starts at the
next document. A unique-token budget U is then the first U tokens of the training region, so
budgets are exact to the token and nested (see `stages.data`). The tokenizer is trained on the
documents at the end of that order, never on validation ones.

Output, `<store>/tokenize/<name>-<hash>/`:
  tokens.bin        every token, uint16 (or uint32 when the vocabulary needs it); numpy.memmap
  doc_offsets.npy   int64, documents + 1 entries: document i is tokens[offsets[i]:offsets[i+1]]
  documents.npy     int64: the source-order index of each stored document
  tokenizer.json    the tokenizer
  manifest.json     source, tokenizer, counts, regions, hashes, versions
  SUCCESS           written last
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scaling.errors import InputError
from stages.artifacts import artifact_dir, atomic_directory, file_sha256, is_complete, step_hash
from stages.corpus import CorpusConfig, corpus_identity, load_corpus
from stages.fields import Count, StoreName
from stages.tokenizer import TokenizerConfig, eod_id, load_tokenizer, token_dtype, train_tokenizer

STAGE = "tokenize"
FORMAT_VERSION = 1
CHUNK_BYTES = 8_000_000  # text per process per `datasets.map` call: bounds the memory of each call
MAP_BATCH_SIZE = 256
MADV_DONTNEED = 4  # <sys/mman.h> on Linux

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total): phases are 'reading', 'training tokenizer', 'tokenizing'."""


class TokenizeConfig(BaseModel):
    """The corpus/tokenizer section of a sweep; everything but `num_proc` goes into the artifact hash."""

    model_config = ConfigDict(extra="forbid")

    name: StoreName = Field("corpus", description="the artifact's name in the store")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    validation_tokens: Count = Field(100_000, description="tokens of the fixed validation split")
    seed: int = Field(0, description="seed of the document shuffle (validation choice and training order)")
    num_proc: int = Field(1, ge=1, description="processes for tokenizing; does not change the output")


def _no_progress(phase: str, done: int, total: int) -> None:
    """The default progress callback: report nothing."""


def tokenize_key(config: TokenizeConfig) -> dict:
    """Everything the artifact depends on: the resolved config, the input's identity, the versions."""
    key = {
        "format": FORMAT_VERSION,
        "config": config.model_dump(mode="json", exclude={"num_proc"}),
        "corpus": corpus_identity(config.corpus),
        "versions": {"datasets": version("datasets"), "tokenizers": version("tokenizers")},
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


def tokenize(config: TokenizeConfig, store: Path, progress: Progress | None = None) -> Path:
    """Run the stage (or reuse its finished artifact) and return the artifact directory."""
    key = tokenize_key(config)
    final = artifact_dir(store, STAGE, config.name, step_hash(key))
    if is_complete(final):
        return final
    with atomic_directory(final) as work, _quiet_libraries():
        _build(config, key, work, progress or _no_progress)
    return final


def _build(config: TokenizeConfig, key: dict, work: Path, progress: Progress) -> None:
    started = time.perf_counter()
    cache = work / "cache"
    progress("reading", 0, 1)
    dataset = load_corpus(config.corpus, cache)
    progress("reading", 1, 1)
    order = np.random.default_rng(config.seed).permutation(len(dataset))

    sample = {"documents": 0, "characters": 0}
    if config.tokenizer.path is None:
        progress("training tokenizer", 0, 1)
        tokenizer = train_tokenizer(_training_sample(dataset, order, config.tokenizer.training_characters, sample), config.tokenizer)
        progress("training tokenizer", 1, 1)
    else:
        tokenizer = load_tokenizer(config.tokenizer)
    tokenizer.save(str(work / "tokenizer.json"))
    eod = eod_id(tokenizer, config.tokenizer)
    dtype = token_dtype(tokenizer.get_vocab_size(), config.tokenizer)

    with _single_threaded_tokenizers():
        lengths, tokens_sha = _write_tokens(dataset, order, tokenizer, eod, dtype, work, config.num_proc, progress)
    del dataset
    shutil.rmtree(cache)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    regions = _regions(offsets, config.validation_tokens, sample["documents"])
    np.save(work / "doc_offsets.npy", offsets)
    np.save(work / "documents.npy", order.astype(np.int64))

    seconds = time.perf_counter() - started
    manifest = {
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
            "eod_id": eod,
            "training_sample": sample,
            "file_sha256": key.get("tokenizer_sha256"),
        },
        "dtype": dtype.name,
        "documents": int(len(lengths)),
        "tokens": int(offsets[-1]),
        **regions,
        "sha256": {
            "tokens.bin": tokens_sha,
            "doc_offsets.npy": file_sha256(work / "doc_offsets.npy"),
            "documents.npy": file_sha256(work / "documents.npy"),
            "tokenizer.json": file_sha256(work / "tokenizer.json"),
        },
        "seconds": round(seconds, 3),
        "tokens_per_second": round(int(offsets[-1]) / seconds, 1),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _training_sample(dataset, order: np.ndarray, characters: int, sample: dict) -> Iterator[str]:
    """The texts of the documents at the end of `order`, until `characters` are reached; counts into `sample`."""
    block = 256
    for end in range(len(order), 0, -block):
        indices = order[max(0, end - block) : end][::-1]
        for text in dataset[indices.tolist()]["text"]:
            text = text or ""
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
    _release_mapped_pages(corpus_files)
    return {"ids": [np.array([*encoding.ids, eod], dtype=dtype) for encoding in encodings]}


def _write_tokens(dataset, order, tokenizer, eod, dtype, work, num_proc, progress) -> tuple[np.ndarray, str]:
    """Tokenize every document and write tokens.bin with the documents in `order`; return their lengths
    (in `order`) and the file's SHA-256.

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
    corpus_files = {os.path.realpath(entry["filename"]) for entry in dataset.cache_files}
    scratch = work / "cache" / "tokens-in-file-order.bin"
    lengths = []
    progress("tokenizing", 0, len(order))
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
                fn_kwargs={"tokenizer": tokenizer, "eod": eod, "dtype": dtype.name, "corpus_files": corpus_files},
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
            progress("tokenizing", end, len(order))
    lengths = np.concatenate(lengths).astype(np.int64)
    digest = _shuffle_documents(scratch, work / "tokens.bin", lengths, order, dtype.itemsize)
    os.remove(scratch)
    return lengths[order], digest


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


def _release_mapped_pages(files: set[str]) -> None:
    """Drop this process's resident pages of its read-only mappings of `files` (MADV_DONTNEED).

    The corpus is a memory-mapped Arrow file (`Dataset.cache_files`); every page a batch reads, and
    the pages the kernel maps around each fault (fault-around, 64 KiB), stay resident in the process
    until unmapped, so the resident size would grow with the corpus. Only read-only mappings of those
    files are touched: their pages are clean, and a later read faults them back in.
    """
    madvise = _libc_madvise()
    if madvise is None or not files:
        return
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() in files and "w" not in fields[1]:
                start, end = (int(value, 16) for value in fields[0].split("-"))
                madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


@functools.lru_cache(maxsize=1)
def _libc_madvise():
    """libc's madvise on Linux (where /proc/self/maps lists the mappings), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).madvise
    except (OSError, AttributeError):
        return None


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


def _regions(offsets: np.ndarray, validation_tokens: int, sample_documents: int) -> dict:
    """The validation and training regions of the token file; InputError when the corpus cannot hold them."""
    documents, total = len(offsets) - 1, int(offsets[-1])
    if total == documents:
        raise InputError("corpus", f"all {documents} documents are empty")
    validation_documents = int(np.searchsorted(offsets, validation_tokens, side="left"))
    if validation_documents >= documents:
        raise InputError("validation_tokens", f"{validation_tokens} leaves no training documents; the corpus has "
            f"{total} tokens in {documents} documents"
        )
    if validation_documents > documents - sample_documents:
        raise InputError("validation_tokens", f"{validation_tokens} reaches into the {sample_documents} documents the tokenizer "
            f"was trained on (the corpus has {total} tokens); lower validation_tokens or tokenizer.training_characters"
        )
    train_start = int(offsets[validation_documents])
    return {
        "validation": {"start": 0, "tokens": validation_tokens, "documents": validation_documents},
        "train": {"start": train_start, "tokens": total - train_start, "documents": documents - validation_documents},
    }


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
