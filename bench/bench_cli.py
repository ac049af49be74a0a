"""Start-up time of the `dcsl` console script against importing the scaling core's own dependencies.

Each command runs in a fresh process, the real console script beside this interpreter
(`.venv/bin/dcsl`), so the time covers interpreter start-up, registering every command and
answering. The baseline, `python -c "import numpy, scipy.optimize"`, is what any law command
must load anyway. Commands and baseline take turns, round after round, the same number of times;
the median wall time of each is compared with the baseline's. Target: <= 1.5x for every command.

Usage: python bench/bench_cli.py [ROUNDS]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 15
TARGET = 1.5
BASELINE = "import numpy, scipy.optimize"
COMMANDS = (
    ["--help"],
    ["allocate", "--preset", "c4", "--flops", "1e22", "--unique-tokens", "25B", "--json"],
    ["predict", "--params", "7B", "--tokens", "237B", "--unique-tokens", "25B"],
)


def console_script() -> str:
    """The installed `dcsl` script next to this interpreter (the one users run), else the one on PATH."""
    beside = Path(sys.executable).with_name("dcsl")
    found = str(beside) if beside.is_file() else shutil.which("dcsl")
    if found is None:
        sys.exit("bench_cli: no dcsl console script; install the project (pip install -e .)")
    return found


def wall_time(argv: list[str]) -> float:
    """Seconds one fresh process takes to run `argv` to a successful exit."""
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(rounds: int = ROUNDS) -> None:
    dcsl = console_script()
    cases = {"baseline: " + BASELINE: [sys.executable, "-c", BASELINE]}
    cases |= {"dcsl " + " ".join(args): [dcsl, *args] for args in COMMANDS}
    for argv in cases.values():  # warm the file cache and bytecode once, untimed
        wall_time(argv)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, argv in cases.items():
            times[name].append(wall_time(argv))
    medians = {name: statistics.median(values) for name, values in times.items()}
    baseline = medians[next(iter(cases))]
    print(f"== CLI start-up: median of {rounds} fresh processes each, interleaved ==")
    for name, median in medians.items():
        print(f"  {name:<80} {median * 1e3:7.0f} ms")
    for name, median in list(medians.items())[1:]:
        print(f"RATIO {name} / baseline = {median / baseline:.2f}  (target <= {TARGET})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS)
