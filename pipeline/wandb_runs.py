"""Reading finished runs from a Weights & Biases project into the run table `dcsl fit` uses.

Each W&B run gives one row: N, D, U and the loss are looked up by key, first in the run's summary,
then in its config (dotted keys reach into nested config sections). The defaults are the keys dcsl's
own mirror writes (`stages.metrics.WandbMirror`): params_non_embedding, tokens, unique_tokens, val_loss.
"""

from __future__ import annotations

import json
import math
from typing import Any

from scaling.errors import InputError
from scaling.runs import RunTable

DEFAULT_KEYS = {"params": "params_non_embedding", "tokens": "tokens", "unique_tokens": "unique_tokens", "loss": "val_loss"}


def parse_filters(text: str | None) -> dict | None:
    """The `--filters` JSON (a MongoDB-style query, as the W&B API takes it); InputError if malformed."""
    if text is None:
        return None
    try:
        filters = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError("--filters", f"{text!r} is not JSON: {err.msg}") from None
    if not isinstance(filters, dict):
        raise InputError("--filters", f"{text!r} must be a JSON object, e.g. '{{\"config.backend\": \"torch\"}}'")
    return filters


def _lookup(run: Any, key: str) -> Any:
    summary = dict(run.summary) if run.summary is not None else {}
    if key in summary:
        return summary[key]
    value: Any = run.config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def read_wandb_runs(project: str, filters: dict | None = None, keys: dict[str, str] | None = None, api: Any = None) -> RunTable:
    """The finished runs of `ENTITY/PROJECT` as a RunTable; runs missing a value are an error naming the run."""
    if project.count("/") != 1 or not all(project.split("/")):
        raise InputError("--wandb", f"{project!r} must look like ENTITY/PROJECT")
    keys = {**DEFAULT_KEYS, **(keys or {})}
    if api is None:
        import wandb

        api = wandb.Api()
    try:
        runs = [run for run in api.runs(project, filters=filters) if getattr(run, "state", "finished") == "finished"]
    except Exception as err:  # the W&B client raises its own error types for auth, network and unknown projects
        raise InputError("--wandb", f"cannot read {project!r}: {err}") from err
    if not runs:
        raise InputError("--wandb", f"{project!r} has no finished runs" + (f" matching {json.dumps(filters)}" if filters else ""))
    columns: dict[str, list] = {"run": [], "params": [], "tokens": [], "unique_tokens": [], "loss": []}
    for run in runs:
        columns["run"].append(run.name)
        for column, key in keys.items():
            value = _lookup(run, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise InputError("--wandb", f"run {run.name!r} has no numeric {key!r} in its summary or config (for {column}); "
                                            f"name the key with --wandb-key {column}=KEY")
            columns[column].append(value)
    return RunTable.from_columns(columns, source=f"wandb:{project}", row_label="W&B run", row_numbers=range(1, len(runs) + 1))
