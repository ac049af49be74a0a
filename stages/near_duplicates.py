"""Near-duplicate documents: MinHash signatures of word n-gram shingles, clustered with MinHash LSH.

The MinHash sketches and the LSH index come from `datasketch` (MinHash, MinHashLSH), pinned in
pyproject.toml. Of the three maintained libraries, it is the one whose sketches are the textbook
construction (independent affine permutations, seeded), whose LSH picks its bands and rows for a
threshold from the false-positive and false-negative probabilities, and which needs nothing but
numpy: `rensa` is faster but a young Rust build whose 0.5 release rejects sketches of the 0.4 one,
and `datatrove` is a whole pipeline framework (its dedup is four disk-backed stages), not a library
to call from a stage function.

Shingles: a document's words (maximal runs of Unicode word characters, case kept) taken `ngram` at
a time. Each word is hashed with CRC-32, each shingle is a polynomial of its words' hashes (the top
32 bits of a 64-bit product), and a document's set of shingle hashes is what its MinHash sketches;
a document with fewer than `ngram` words is its set of words, one with no word an empty set.

Two documents are near-duplicates when the Jaccard similarity of their shingle sets, as estimated
from their signatures (standard error about sqrt(J (1 - J) / permutations): 0.035 at J = 0.2 with
128 permutations), is at least a threshold. MinHashLSH finds the candidate pairs, its bands tuned
for recall (LSH_WEIGHTS: a pair at the threshold is a candidate with probability 0.87 to 0.93, one
0.05 above it 0.95 to 0.98); a candidate is kept only if its estimate reaches the threshold. Clusters are the connected components of those
pairs (a near-duplicate of a near-duplicate shares the cluster), each labelled by its first document.
"""

from __future__ import annotations

import gc
import re
import zlib
from collections.abc import Callable, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stages.host_memory import return_freed_memory

_WORD = re.compile(r"\w+")
_SHINGLE_BASE = np.uint64(0x9E3779B97F4A7C15)  # the multiplier of the polynomial over a shingle's word hashes
_BATCH = 8192  # shingles per `update_batch`: bounds the (shingles x permutations) array it builds
LSH_WEIGHTS = (0.1, 0.9)  # false positives against false negatives when datasketch picks the bands: candidates are
# checked against the threshold, so a false positive costs one comparison and a false negative a missed pair


class MinHashConfig(BaseModel):
    """How documents are compared: word n-gram shingles and their MinHash signatures."""

    model_config = ConfigDict(extra="forbid")

    ngram: int = Field(5, ge=1, le=64, description="words per shingle")
    permutations: int = Field(128, ge=16, le=1024, description="MinHash permutations: the length of each document's signature")
    seed: int = Field(1, ge=0, description="seed of the MinHash permutations")


def shingles(text: str, ngram: int) -> np.ndarray:
    """The distinct 32-bit hashes of a text's word n-grams, sorted."""
    words = _WORD.findall(text)
    word_hash = {word: zlib.crc32(word.encode()) for word in set(words)}
    hashes = np.fromiter(map(word_hash.__getitem__, words), dtype=np.uint64, count=len(words))
    if len(hashes) >= ngram:
        count = len(hashes) - ngram + 1
        combined = np.zeros(count, dtype=np.uint64)
        for k in range(ngram):
            combined = combined * _SHINGLE_BASE + hashes[k : k + count]
        hashes = combined >> np.uint64(32)
    return np.unique(hashes.astype(np.uint32))


def signatures(texts: Iterable[str], config: MinHashConfig, done: Callable[[int], None] | None = None) -> np.ndarray:
    """The MinHash signature of every text: a (texts x permutations) uint32 array; `done(k)` after each text."""
    from datasketch import MinHash

    rows = []
    sketch = MinHash(num_perm=config.permutations, seed=config.seed, hashfunc=int)
    for text in texts:
        sketch.clear()
        hashes = shingles(text, config.ngram).tolist()
        for start in range(0, len(hashes), _BATCH):
            sketch.update_batch(hashes[start : start + _BATCH])
        rows.append(sketch.hashvalues)
        if done is not None:
            done(len(rows))
    return np.array(rows, dtype=np.uint32).reshape(len(rows), config.permutations)


def clusters(signatures: np.ndarray, threshold: float, config: MinHashConfig) -> np.ndarray:
    """Each document's cluster: the index of the first document (by row) of its cluster, int64.

    Candidates come from a MinHashLSH index tuned to `threshold`; a pair joins only if its estimated
    Jaccard similarity is at least `threshold`. A document with an empty shingle set joins nothing.
    The index (datasketch's bands are dicts of sets: about 8 KB per document) is freed before this
    returns and the C heap trimmed, so the caller's resident memory does not keep it.
    """
    labels = _components(signatures, threshold, config)
    gc.collect()  # the index's objects hold reference cycles: free them now, then hand their pages back
    return_freed_memory()
    return labels


def _components(signatures: np.ndarray, threshold: float, config: MinHashConfig) -> np.ndarray:
    """`clusters`, its index alive only here."""
    from datasketch import MinHash, MinHashLSH

    permutations = MinHash(num_perm=config.permutations, seed=config.seed).permutations
    sketches = [MinHash(seed=config.seed, hashvalues=row, permutations=permutations, scheme="affine32") for row in signatures]
    empty = np.all(signatures == np.iinfo(np.uint32).max, axis=1)
    index = MinHashLSH(threshold=threshold, num_perm=config.permutations, weights=LSH_WEIGHTS)
    parent = np.arange(len(sketches), dtype=np.int64)
    for row, sketch in enumerate(sketches):
        if empty[row]:
            continue
        for other in index.query(sketch):
            if sketch.jaccard(sketches[other]) >= threshold:
                _join(parent, row, other)
        index.insert(row, sketch)
    return np.array([_root(parent, row) for row in range(len(parent))], dtype=np.int64)


def _root(parent: np.ndarray, row: int) -> int:
    while parent[row] != row:
        parent[row] = parent[parent[row]]
        row = int(parent[row])
    return row


def _join(parent: np.ndarray, a: int, b: int) -> None:
    """Union of two clusters; the smaller root (the earlier document) stays the root."""
    a, b = _root(parent, a), _root(parent, b)
    parent[max(a, b)] = min(a, b)
