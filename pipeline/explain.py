"""Why a sweep runs a step, or doesn't (`dcsl sweep --explain`).

A step that is done or running elsewhere is not run; one that failed, whose input failed, that was
interrupted, or whose finished output is damaged is run again, and the reason says so. A new step
is compared with the most recently started other version of it (same stage and name, another
hash): the reason names the config fields that changed (dotted, with old and new values) and the
inputs that changed (keyed by `<stage>/<name>`), so "new" means no earlier version was ever started.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline.step import HASH, Decision, State, Step, StepInfo

_STEP_ID = re.compile(rf"(?P<stage>[^/]+)/(?P<name>.+)-(?P<hash>{HASH})")


def decide(step: Step, info: StepInfo, versions: Iterable[dict]) -> Decision:
    """Whether a sweep will run `step`, and why, from what the store found about it (`info`) and the
    `step.json` records of its other versions (read only for a new step): done, new, config changed
    (which fields), input changed (which), failed before, input failed, interrupted, damaged, running
    elsewhere."""
    state = info.state
    if state is State.DONE:
        return Decision(False, "done", state)
    if state is State.DAMAGED:
        return Decision(True, f"damaged ({info.detail}): runs again", state)
    if state is State.RUNNING:
        return Decision(False, f"running elsewhere ({info.detail})", state)
    if state is State.FAILED:
        return Decision(True, f"failed before: {info.detail}", state)
    if state is State.DEP_FAILED:
        return Decision(True, f"input failed before: {info.detail}", state)
    if state is State.INTERRUPTED:
        how = "resumes from checkpoint" if info.path.is_dir() else "starts again"
        return Decision(True, f"interrupted: {how}", state)
    previous = _previous(versions)
    if previous is None:
        return Decision(True, "new", state)
    config_changes = _diff(_flatten(previous.get("config", {})), _flatten(step.config))
    input_changes = _diff(_input_keys(previous.get("inputs", [])), _input_keys(step.inputs))
    parts = []
    if config_changes:
        parts.append("config changed: " + ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in config_changes.items()))
    if input_changes:
        parts.append("input changed: " + ", ".join(f"{a or '(none)'} -> {b or '(none)'}" for a, b in input_changes.values()))
    changed = {**config_changes, **{f"inputs.{k}": v for k, v in input_changes.items()}}
    return Decision(True, "; ".join(parts) or "new", state, changed)


def _previous(versions: Iterable[dict]) -> dict | None:
    """The most recently started of the versions (the first of equals), or None."""
    return max(versions, key=lambda record: record.get("started", 0), default=None)


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, default=str)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {dotted.key: leaf}; lists are leaves."""
    if isinstance(value, Mapping) and (value or not prefix):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for keys whose values differ; a key missing on one side reads as None there (so a
    section that was null and now has settings lists those settings, not the section)."""
    keys = list(new) + [k for k in old if k not in new]
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def _input_keys(inputs: Sequence[str]) -> dict[str, str]:
    """Inputs keyed by `<stage>/<name>` (by position for bare hashes), so a changed input is named."""
    keyed = {}
    for position, input_id in enumerate(inputs):
        match = _STEP_ID.fullmatch(input_id)
        keyed[f"{match['stage']}/{match['name']}" if match else f"#{position}"] = input_id
    return keyed
