"""Reading a tokenize artifact that may hold several pools (`stages.pools`): the pools' token data by name."""

from __future__ import annotations

from pathlib import Path

from stages.data import TokenData


def is_pooled(data: TokenData) -> bool:
    """Whether the artifact holds several pools (its manifest lists them)."""
    return "pools" in data.manifest


def pool_data(data: TokenData) -> dict[str, TokenData]:
    """Each pool's own artifact, by name, in the corpus's order (the first is the reference)."""
    return {entry["name"]: TokenData(data.path / entry["path"]) for entry in data.manifest["pools"]}


def train_tokens(path: Path) -> int | dict[str, int]:
    """The training tokens of a tokenize artifact: one number, or one per pool for a multi-pool artifact."""
    return manifest_train_tokens(TokenData(path).manifest)


def manifest_train_tokens(manifest: dict) -> int | dict[str, int]:
    """The training tokens a tokenize manifest records: one number, or one per pool (by name) for several pools."""
    if "pools" in manifest:
        return {entry["name"]: entry["train_tokens"] for entry in manifest["pools"]}
    return manifest["train"]["tokens"]
