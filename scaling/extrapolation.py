"""Is an answer inside the range of runs a law was fitted on?

A law fitted on models of 10K to 1M parameters says little about 10 parameters or 10B. `law.json`
records the range of N and D its runs spanned (`fitted_range`); the presets carry the range of the
runs they come from. `outside_range` names every quantity of an answer that lies more than
`FACTOR` times beyond that range, so the CLI can warn instead of answering silently.
"""

from __future__ import annotations

import numpy as np

FACTOR = 10.0
PRESET_RANGES = {
    # Hoffmann et al. (2022): "over 400 language models ranging from 70 million to over 16 billion
    # parameters on 5 to 500 billion tokens".
    "chinchilla": {"params": [7e7, 1.6e10], "tokens": [5e9, 5e11]},
    # Muennighoff et al. (2023), the 182 C4 runs of the final fit (examples/datablations_c4.csv).
    "c4": {"params": [7.098752e6, 8.67e9], "tokens": [1e8, 9e11]},
}
LABELS = {"params": "N", "tokens": "D"}


def fitted_range(params: np.ndarray, tokens: np.ndarray) -> dict[str, list[float]]:
    """The smallest and largest N and D of a fit's runs, as law.json records them."""
    return {"params": [float(np.min(params)), float(np.max(params))],
            "tokens": [float(np.min(tokens)), float(np.max(tokens))]}  # fmt: skip


def outside_range(fitted: dict[str, list[float]] | None, **values: float) -> list[str]:
    """One line per value (params=, tokens=) more than FACTOR x outside `fitted`; empty when all are inside."""
    warnings = []
    for key, value in values.items():
        if fitted is None or key not in fitted or not np.isfinite(value):
            continue
        low, high = fitted[key]
        label = LABELS.get(key, key)
        if value < low / FACTOR:
            warnings.append(f"{label} = {value:.3g} is {low / value:.3g}x below the smallest {label} the law was fitted on "
                            f"({low:.3g}): an extrapolation")
        elif value > high * FACTOR:
            warnings.append(f"{label} = {value:.3g} is {value / high:.3g}x above the largest {label} the law was fitted on "
                            f"({high:.3g}): an extrapolation")
    return warnings
