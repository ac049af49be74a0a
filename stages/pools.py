"""The tokenize stage for several pools: one artifact holding one tokenize artifact per pool.

Each pool is read, clustered and ordered as a one-pool corpus is (`stages.tokenize.prepare`), with
the corpus's seed. One tokenizer is then trained on the union: an equal share of
`tokenizer.training_characters` from the end of each pool's order (never a validation document),
or loaded from `tokenizer.path`. Each pool is tokenized with it into its own sub-artifact, a
complete tokenize artifact of its own (its validation split, training region, contamination and
`SUCCESS`), readable with `stages.data.TokenData`. A pool's unique budget U_i is the first U_i
tokens of its training region, exact and nested as for one corpus.

Output, `<store>/tokenize/<name>-<hash>/`:
  tokenizer.json        the shared tokenizer
  pools/<pool>/         one tokenize artifact per pool (`stages.tokenize`)
  manifest.json         the pools in order with their counts, the tokenizer, the hash (`pools` marks the layout)
  SUCCESS               written last
"""

from __future__ import annotations

import json
import time
from itertools import chain
from pathlib import Path

from stages.artifacts import mark_success, step_hash
from stages.data import TokenData
from stages.tokenize import Progress, TokenizeConfig, manifest_head, prepare, training_sample, write_artifact
from stages.tokenizer import load_tokenizer, train_tokenizer

POOLS_DIR = "pools"


def pool_config(config: TokenizeConfig, index: int) -> TokenizeConfig:
    """The one-corpus config of pool `index`: its corpus and split, the shared tokenizer, seed and processes."""
    pool = config.pools[index]
    return TokenizeConfig(name=pool.name, corpus=pool.corpus, tokenizer=config.tokenizer, validation_tokens=pool.validation_tokens,
                          seed=config.seed, minhash=pool.minhash, split=pool.split, num_proc=config.num_proc)  # fmt: skip


def build_pools(config: TokenizeConfig, key: dict, work: Path, progress: Progress) -> None:
    """Build the multi-pool artifact of `config` (its `tokenize_key` is `key`) into `work`."""
    started = time.perf_counter()
    configs = [pool_config(config, index) for index in range(len(config.pools))]
    folders = [work / POOLS_DIR / pool.name for pool in configs]
    prepared = []
    for pool, folder in zip(configs, folders):
        folder.mkdir(parents=True)
        prepared.append(prepare(pool, None, folder, _named(progress, pool.name), None))
    samples = [{"documents": 0, "characters": 0} for _ in configs]
    if config.tokenizer.path is None:
        progress("training tokenizer", 0, 1)
        share = config.tokenizer.training_characters // len(configs)
        texts = chain.from_iterable(training_sample(found, share, sample) for found, sample in zip(prepared, samples))
        tokenizer = train_tokenizer(texts, config.tokenizer)
        progress("training tokenizer", 1, 1)
    else:
        tokenizer = load_tokenizer(config.tokenizer)
    tokenizer.save(str(work / "tokenizer.json"))
    digest = step_hash(key)  # the multi-pool artifact's hash, recorded in each pool's key
    for index, (pool, folder) in enumerate(zip(configs, folders)):
        pool_key = {**key, "config": pool.hashed(), "corpus": key["corpus"][pool.name], "pools_hash": digest}
        write_artifact(pool, pool_key, folder, _named(progress, pool.name), prepared[index], tokenizer, samples[index])
        prepared[index] = None  # its corpus is no longer needed
        mark_success(folder)
    summaries = [_summary(TokenData(folder), pool.name) for pool, folder in zip(configs, folders)]
    manifest = {
        **manifest_head(config, key, tokenizer, {pool.name: sample for pool, sample in zip(configs, samples)}),
        "pools": summaries,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _summary(data: TokenData, name: str) -> dict:
    manifest = data.manifest
    return {"name": name, "path": f"{POOLS_DIR}/{name}", "documents": manifest["documents"], "tokens": manifest["tokens"],
            "validation_tokens": manifest["validation"]["tokens"], "train_tokens": manifest["train"]["tokens"],
            "contamination": manifest["contamination"]}  # fmt: skip


def _named(progress: Progress, pool: str) -> Progress:
    """The progress callback with each phase prefixed by the pool's name."""
    return lambda phase, done, total: progress(f"{pool}: {phase}", done, total)
