"""The tokenizer: a byte-level BPE trained with `tokenizers`, or a `tokenizer.json` the user gives."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaling.errors import InputError
from stages.fields import Count

if TYPE_CHECKING:  # `tokenizers` loads when a tokenizer is trained or read, not with the config
    from tokenizers import Tokenizer

BYTE_ALPHABET = 256
_DTYPE_LIMITS = {"uint16": 2**16, "uint32": 2**32}


class TokenizerConfig(BaseModel):
    """Train a byte-level BPE of `vocab_size` tokens, or load `path` (a tokenizer.json)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="a tokenizer.json to use instead of training one")
    vocab_size: int = Field(8192, description="trained vocabulary size, the end-of-document token included")
    training_characters: Count = Field(5_000_000, description="characters of training documents to train the BPE on")
    eod_token: str = "<|endoftext|>"
    dtype: Literal["auto", "uint16", "uint32"] = Field("auto", description="token file dtype; auto: uint16 when it fits")

    @model_validator(mode="after")
    def _vocabulary_fits(self) -> TokenizerConfig:
        if self.path is None and self.vocab_size < BYTE_ALPHABET + 1:
            raise InputError("vocab_size", f"{self.vocab_size} is too small; a byte-level BPE needs at least "
                f"{BYTE_ALPHABET + 1} (256 bytes and the end-of-document token)"
            )
        limit = _DTYPE_LIMITS["uint32" if self.dtype == "auto" else self.dtype]
        if self.path is None and self.vocab_size > limit:
            raise InputError("vocab_size", f"{self.vocab_size} does not fit dtype {self.dtype}; at most {limit}")
        return self


def token_dtype(vocab_size: int, config: TokenizerConfig) -> np.dtype:
    """The token file dtype for a vocabulary: uint16 when it fits (unless uint32 is asked for)."""
    name = config.dtype if config.dtype != "auto" else ("uint16" if vocab_size <= _DTYPE_LIMITS["uint16"] else "uint32")
    if vocab_size > _DTYPE_LIMITS[name]:
        raise InputError(
            "tokenizer.dtype", f"a vocabulary of {vocab_size} tokens does not fit {name} (at most {_DTYPE_LIMITS[name]})"
        )
    return np.dtype(name)


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """Train a byte-level BPE on `texts`; the end-of-document token gets id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=[config.eod_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load_tokenizer(config: TokenizerConfig) -> Tokenizer:
    """Load the user's tokenizer.json; InputError if missing, unreadable or without the end-of-document token."""
    from tokenizers import Tokenizer

    path = Path(config.path or "")
    if not path.is_file():
        raise InputError("tokenizer.path", f"{config.path!r} does not exist")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for malformed files
        raise InputError("tokenizer.path", f"{config.path!r} is not a tokenizer.json: {err}") from err
    eod_id(tokenizer, config)
    token_dtype(tokenizer.get_vocab_size(), config)
    return tokenizer


def eod_id(tokenizer: Tokenizer, config: TokenizerConfig) -> int:
    """The id of the end-of-document token; InputError if the vocabulary lacks it."""
    token_id = tokenizer.token_to_id(config.eod_token)
    if token_id is None:
        raise InputError("tokenizer.eod_token", f"{config.eod_token!r} is not in the tokenizer's vocabulary")
    return token_id
