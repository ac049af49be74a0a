"""`dcsl tokenize CONFIG.yaml`: tokenize a corpus into the store, as a sweep would.

The YAML file holds the stage's settings under `data:` (a `TokenizeConfig`, the same section a
sweep file uses) and optionally the store root under `store:`; other top-level sections (a
sweep's) are left to the commands that read them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.cli import app, fail
from scaling.units import format_quantity

if TYPE_CHECKING:  # the tokenize stage and its config (numpy, pydantic) load only when the command runs
    from stages.tokenize import TokenizeConfig

SECTION = "data"
DEFAULT_STORE = "store"


def load_tokenize_config(path: Path) -> tuple[TokenizeConfig, Path]:
    """The `data` section of a YAML file as a TokenizeConfig, and its store root; InputError if bad."""
    from pipeline.config_files import read_section, read_yaml
    from stages.tokenize import TokenizeConfig

    document = read_yaml(path)
    config = read_section(document, SECTION, TokenizeConfig, path, "the corpus and tokenizer settings")
    return config, Path(document.get("store") or DEFAULT_STORE)


class _RichProgress:
    """A progress callback that draws one rich bar per phase."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)


@app.command("tokenize")
def tokenize_command(
    config: Path = typer.Argument(..., help="YAML file with a 'data:' section (corpus, tokenizer, validation_tokens, seed)."),
    store: Path | None = typer.Option(None, "--store", help="Store root; default: the file's 'store:' or ./store."),
    num_proc: int | None = typer.Option(None, "--num-proc", help="Tokenizing processes (does not change the output)."),
) -> None:
    """Tokenize a corpus into the store (or reuse the finished artifact) and summarise it."""
    from stages.artifacts import is_complete
    from stages.tokenize import tokenize, tokenize_path

    settings, store_root = load_tokenize_config(config)
    if num_proc is not None:
        if num_proc < 1:
            fail("--num-proc", f"{num_proc} must be at least 1")
        settings = settings.model_copy(update={"num_proc": num_proc})
    store_root = store or store_root
    reused = is_complete(tokenize_path(settings, store_root))
    started = time.perf_counter()
    columns = (TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=reused) as progress:
        artifact = tokenize(settings, store_root, progress=_RichProgress(progress))
    _summarise(artifact, reused, time.perf_counter() - started)


def _summarise(artifact: Path, reused: bool, seconds: float) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    if reused:
        typer.echo(f"reused {artifact} (same config and input; finished earlier in {manifest['seconds']:.1f} s)")
    else:
        typer.echo(f"wrote {artifact} in {seconds:.1f} s")
    parts = [(f"pool {pool['name']}: ", artifact / pool["path"]) for pool in manifest["pools"]] if "pools" in manifest else [("", artifact)]
    for prefix, folder in parts:  # several pools: each pool's own artifact
        _describe(json.loads((folder / "manifest.json").read_text()), prefix)


def _describe(manifest: dict, prefix: str) -> None:
    tokenizer = manifest["tokenizer"]
    typer.echo(
        f"{prefix}documents {manifest['documents']:,}  tokens {manifest['tokens']:,} ({format_quantity(manifest['tokens'])})  "
        f"tokens/s {manifest['tokens_per_second']:,.0f}\n"
        f"validation {manifest['validation']['tokens']:,} tokens in {manifest['validation']['documents']:,} documents  "
        f"training {manifest['train']['tokens']:,} tokens in {manifest['train']['documents']:,} documents\n"
        f"vocabulary {tokenizer['vocab_size']:,} ({'trained' if tokenizer['trained'] else 'given'})  dtype {manifest['dtype']}"
    )
    for line in data_quality_lines(manifest):
        typer.echo(line)


def data_quality_lines(manifest: dict) -> list[str]:
    """What a tokenize manifest says of the split, the dedup and the validation contamination, for people."""
    split, held_out, dedup = manifest["split"], manifest["held_out"], manifest["dedup"]
    lines = [
        f"split: near-duplicates at Jaccard >= {split['near_duplicates']} kept on one side: {split['clusters']:,} clusters, "
        f"{split['documents_in_clusters']:,} documents share one, largest {split['largest_cluster']:,}; "
        f"held out of both sides {held_out['tokens']:,} tokens"
        if split["near_duplicates"] is not None else f"split: documents alone (no near-duplicate clusters); held out {held_out['tokens']:,} tokens"
    ]
    if dedup:
        lines.append(f"dedup ({dedup['artifact']}): removed {dedup['documents']:,} documents ({dedup['exact']:,} exact, "
                     f"{dedup['near']:,} near duplicates), {dedup['tokens']:,} tokens")
    lines.append(contamination_line(manifest))
    return lines


def contamination_line(manifest: dict, budgets: dict[int, float] | None = None) -> str:
    """One line: the share of validation windows found in the training region, overall and at budgets
    (the given exact ones, else the manifest's powers of two)."""
    record = manifest["contamination"]
    shares = budgets or {int(budget): share for budget, share in record["within"].items()}
    at = ", ".join(f"{format_quantity(budget)} {share:.2%}" for budget, share in sorted(shares.items()))
    return (f"validation contamination ({record['window_tokens']}-token windows found in training): "
            f"overall {record['overall']:.2%}; within the first U training tokens: {at}")
