"""Does the cluster have what the sweep's runs ask for? Checked before any work starts.

A run asks for `cpus` and `gpus` on each of `nodes` machines. It fits when the cluster has at
least `nodes` machines that each have that many CPUs and GPUs (Ray Train places one worker per
rank; a single-rank run needs one machine with all of it). Only resources Ray reports count: a
cluster that grows on demand (an autoscaler) should be started at its full size first.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.expand import RunSpec
from scaling.errors import InputError


def node_capacities(nodes: list[dict]) -> list[dict[str, float]]:
    """CPUs and GPUs of each alive node, from `ray.nodes()` entries."""
    return [
        {"CPU": node["Resources"].get("CPU", 0.0), "GPU": node["Resources"].get("GPU", 0.0)}
        for node in nodes if node.get("Alive", True)
    ]  # fmt: skip


def check_fits_cluster(runs: list[RunSpec], capacities: list[dict[str, float]], field_of: Callable[[str], str],
                       holder: str = "the Ray cluster") -> None:
    """InputError naming the first run whose resources no set of the cluster's nodes can give.

    `field_of(model)` is the config field a model's resources come from
    (`SweepConfig.resources_field`), so that the message names what to change; `holder` names
    what the capacities describe.
    """
    for run in runs:
        wants = run.resources
        where = field_of(run.model)
        able = [node for node in capacities if node["CPU"] >= wants.cpus and node["GPU"] >= wants.gpus]
        if len(able) >= wants.nodes:
            continue
        most_cpus = max((node["CPU"] for node in capacities), default=0)
        most_gpus = max((node["GPU"] for node in capacities), default=0)
        if wants.gpus > most_gpus:
            field, value, has = "gpus", wants.gpus, f"its largest node has {most_gpus:g} GPUs"
        elif wants.cpus > most_cpus:
            field, value, has = "cpus", wants.cpus, f"its largest node has {most_cpus:g} CPUs"
        else:
            field, value, has = "nodes", wants.nodes, f"only {len(able)} of its {len(capacities)} nodes have {wants.cpus} CPUs and {wants.gpus} GPUs"
        raise InputError(f"{where}.{field}", f"{value} asked for by run {run.name}, but {holder} lacks it: {has}")
