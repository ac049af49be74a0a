"""Reading a tokenize artifact: the token file, the validation split and the unique-token budgets.

A budget of U unique tokens is the first U tokens of the training region, which is the training
documents in the artifact's seeded order: exact to the token (the last document is cut) and
nested (the U1 budget is the start of the U2 budget), and disjoint from the validation split.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from scaling.errors import InputError
from stages.artifacts import damage


class TokenData:
    """A finished tokenize artifact, its arrays read through `numpy.memmap`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if (problem := damage(self.path)) is not None:
            raise InputError("tokens", f"{str(self.path)!r} is not a usable tokenize artifact: {problem}")
        self.manifest: dict = json.loads((self.path / "manifest.json").read_text())

    @cached_property
    def tokens(self) -> np.memmap:
        """Every token of every document, in stored order."""
        return np.memmap(self.path / "tokens.bin", dtype=self.manifest["dtype"], mode="r")

    @cached_property
    def doc_offsets(self) -> np.ndarray:
        """Stored document i is `tokens[doc_offsets[i]:doc_offsets[i + 1]]` (its end-of-document token included)."""
        return np.load(self.path / "doc_offsets.npy", mmap_mode="r")

    @cached_property
    def documents(self) -> np.ndarray:
        """The source-order index of each stored document."""
        return np.load(self.path / "documents.npy", mmap_mode="r")

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The artifact's tokenizer."""
        return Tokenizer.from_file(str(self.path / "tokenizer.json"))

    @property
    def eod_id(self) -> int:
        """The end-of-document token id."""
        return self.manifest["tokenizer"]["eod_id"]

    @property
    def train_tokens(self) -> int:
        """How many tokens the training region holds: the largest possible budget."""
        return self.manifest["train"]["tokens"]

    def validation(self) -> np.ndarray:
        """The fixed validation split: exactly `validation_tokens` tokens of whole validation documents."""
        return self.tokens[: self.manifest["validation"]["tokens"]]

    def budget(self, unique_tokens: int) -> np.ndarray:
        """The first `unique_tokens` tokens of the training region; InputError if the corpus is too small."""
        if unique_tokens != int(unique_tokens) or unique_tokens < 1:
            raise InputError("unique_tokens", f"{unique_tokens!r} must be a positive whole number of tokens")
        if unique_tokens > self.train_tokens:
            raise InputError("unique_tokens", f"{int(unique_tokens)} exceeds the {self.train_tokens} training tokens of "
                f"{self.manifest['name']} ({self.path}); use at most {self.train_tokens}"
            )
        start = self.manifest["train"]["start"]
        return self.tokens[start : start + int(unique_tokens)]

    def document(self, index: int) -> np.ndarray:
        """The tokens of stored document `index`, its end-of-document token included."""
        return self.tokens[self.doc_offsets[index] : self.doc_offsets[index + 1]]
