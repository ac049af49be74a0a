"""`stages.host_memory`: with freed memory kept, a CPU training step stops faulting in fresh pages.

Each case runs in its own process: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STEPS = f"""
import json, resource, sys
sys.path.insert(0, {str(ROOT)!r})
import torch
from stages.host_memory import keep_freed_memory
from stages.model import Transformer, token_losses
from stages.shapes import ModelShape
torch.set_num_threads(1)
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
model = Transformer(ModelShape(1, 32, 1, 4096, 128))
tokens = torch.randint(0, 4096, (16, 129))  # logits of 16 x 128 x 4096 floats: 32 MiB, above glibc's mmap threshold
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    token_losses(model(tokens[:, :-1]), tokens[:, 1:]).mean().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"applied": applied, "faults": faults}}))
"""


def _page_faults_per_step(mode: str) -> tuple[bool | None, list[int]]:
    result = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, timeout=300)
    answer = json.loads(result.stdout.splitlines()[-1])
    return answer["applied"], answer["faults"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; other C libraries are left alone")
def test_kept_memory_stops_the_page_faults_of_each_step():
    _, plain = _page_faults_per_step("plain")
    applied, kept = _page_faults_per_step("keep")
    assert applied is True
    page = 4096
    logits_pages = 16 * 128 * 4096 * 4 // page
    steady_plain, steady_kept = sorted(plain[8:])[4], sorted(kept[8:])[4]  # medians of the last 8 steps
    # By default the logits, their gradient, the log-softmax and its gradient are fresh pages every step.
    assert steady_plain >= 3 * logits_pages
    # Kept: once the heap has grown to the step's peak, a step re-uses its pages.
    assert steady_kept < logits_pages // 16
    # At most a rare step grows the heap again (seen once in CI: 2 logits' worth in the last 8 steps);
    # by default every one of them faults several logits' worth.
    assert sum(faults >= logits_pages // 16 for faults in kept[8:]) <= 2
    assert all(faults >= logits_pages // 16 for faults in plain[8:])
