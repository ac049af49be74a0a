"""The validation split and the training region, with near-duplicate clusters kept whole on one side.

Order: the near-duplicate clusters (`stages.near_duplicates`) are shuffled with the seed, each cluster's
documents kept together, in the order of a second seeded shuffle. Every cluster is equally likely
to come first, whatever its size; with no near-duplicates the order is the plain seeded shuffle of
the documents.

Regions: the first `validation_tokens` tokens are the validation split (whole documents, the last
one cut). The training region starts at the first document of the next cluster, so no cluster has
documents on both sides: the rest of the cut document and the cluster's later documents are held
out, used nowhere, and counted in the manifest (`held_out`).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scaling.errors import InputError


class SplitConfig(BaseModel):
    """How the validation split is kept apart from the training region."""

    model_config = ConfigDict(extra="forbid")

    near_duplicates: float | None = Field(
        0.2,
        gt=0,
        le=1,
        description="Jaccard similarity of two documents' word-shingle sets (estimated by MinHash) at or above which "
        "they are one cluster, kept whole on one side of the split; null: every document is its own cluster",
    )


def document_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """The stored order of the documents: indices into `labels` (each document's cluster label)."""
    rng = np.random.default_rng(seed)
    names, cluster = np.unique(labels, return_inverse=True)
    cluster_rank = np.argsort(rng.permutation(len(names)))  # the k-th cluster of the shuffle has rank k
    document_rank = rng.permutation(len(labels))
    return np.lexsort((document_rank, cluster_rank[cluster]))


def regions(offsets: np.ndarray, labels: np.ndarray, validation_tokens: int, sample_documents: int) -> dict:
    """The validation split, the held-out tokens and the training region of the token file, from the stored
    documents' offsets and cluster labels; InputError when the corpus cannot hold them."""
    documents, total = len(offsets) - 1, int(offsets[-1])
    if total == documents:
        raise InputError("corpus", f"all {documents} documents are empty")
    validation_documents = min(int(np.searchsorted(offsets, validation_tokens, side="left")), documents)
    others = np.flatnonzero(labels[validation_documents:] != labels[validation_documents - 1])
    if not len(others):
        raise InputError("validation_tokens", f"{validation_tokens} leaves no training documents; the corpus has "
            f"{total} tokens in {documents} documents"
        )
    first_train = validation_documents + int(others[0])
    if first_train > documents - sample_documents:
        raise InputError("validation_tokens", f"{validation_tokens} reaches into the {sample_documents} documents the tokenizer "
            f"was trained on (the corpus has {total} tokens); lower validation_tokens or tokenizer.training_characters"
        )
    train_start = int(offsets[first_train])
    return {
        "validation": {"start": 0, "tokens": validation_tokens, "documents": validation_documents},
        "held_out": {"tokens": train_start - validation_tokens, "documents": first_train - validation_documents},
        "train": {"start": train_start, "tokens": total - train_start, "documents": documents - first_train},
    }


def cluster_counts(labels: np.ndarray) -> dict:
    """How many clusters, how many documents share a cluster with another, and the largest cluster's size."""
    _, sizes = np.unique(labels, return_counts=True)
    return {"clusters": int(len(sizes)), "documents_in_clusters": int(sizes[sizes > 1].sum()), "largest_cluster": int(sizes.max())}
