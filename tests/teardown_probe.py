"""One rank of `python -m stages.train` that then reports the native threads it still runs (tests/test_train_teardown.py).

Run under torchrun like `stages.train`; after the rank's run (and its teardown) it writes the names
of its threads, read from /proc/self/task, as JSON to `threads-<rank>.json` in the folder that
`$TEARDOWN_PROBE_DIR` names, and exits with the rank's code.
"""

import json
import os
import sys
from pathlib import Path

from stages.train import main

OUT = "TEARDOWN_PROBE_DIR"


def thread_names() -> list[str]:
    """The names of this process's native threads (Linux: /proc/self/task/*/comm)."""
    return sorted((task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir())


if __name__ == "__main__":
    code = main(sys.argv[1:])
    (Path(os.environ[OUT]) / f"threads-{os.environ['RANK']}.json").write_text(json.dumps(thread_names()))
    sys.exit(code)
