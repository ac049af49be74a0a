"""A sweep's request that the steps it started stop: a file in the store that each of its tasks watches.

When a sweep is interrupted (Ctrl-C, SIGTERM), its runner writes `<store>/.stop/<id>`, an id of its
own. Each task it started watches that file from a thread while the step runs, and raises
KeyboardInterrupt in the task's main thread once it appears: the step then ends as on Ctrl-C
(`Store.claim` writes INTERRUPTED and releases the lease). A task that starts after the request
(queued, or retried after its worker died) ends at once without claiming anything.

This is what `ray.cancel` would do, without its race: in Ray 2.60 a cancel that crosses the reply
of a task just finishing aborts the driver ("Check failed: it != submissible_tasks_.end() Tried to
complete task that was not pending", ray-project/ray#54798). Going through the store, it works on
any cluster that shares the store, which every multi-node sweep does.
"""

from __future__ import annotations

import _thread
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FOLDER = ".stop"


class StopRequest:
    """The stop request of one sweep's runner: `path` exists once the sweep asked its steps to stop."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def new(cls, root: Path) -> StopRequest:
        """A request of its own for a runner on the store at `root` (nothing written yet)."""
        return cls(Path(root) / FOLDER / uuid.uuid4().hex)

    def make(self) -> None:
        """Ask every task watching this request to stop."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    @property
    def made(self) -> bool:
        """Whether the stop was asked for."""
        return self.path.exists()

    @contextmanager
    def watched(self, poll: float = 0.2) -> Iterator[None]:
        """Run the body (in the main thread); once the request is made, KeyboardInterrupt is raised in it."""
        lock, done = threading.Lock(), threading.Event()

        def watch() -> None:
            while not done.wait(poll):
                with lock:
                    if not done.is_set() and self.made:
                        _thread.interrupt_main()
                        return

        watcher = threading.Thread(target=watch, name="dcsl-stop-request", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            with lock:  # an interrupt is raised in the body or here, never after the body's caller moved on
                done.set()
            watcher.join()
