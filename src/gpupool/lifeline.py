"""Children that die with their parent: the processes `gpupool devnet` starts.

Closing the terminal (SIGHUP) or killing the devnet (SIGKILL) must not leave its gateway,
providers and checkers running with port 8000 taken. Two mechanisms, both set up by the
parent for each child it spawns:

* Linux: `prctl(PR_SET_PDEATHSIG, SIGTERM)` in the child between fork and exec
  (`preexec`), so the kernel signals it the moment the parent dies;
* everywhere: the parent's pid in `GPUPOOL_PARENT_PID`; `watch_parent()` (called by
  `python -m gpupool`) polls `getppid()` and terminates the process once it changes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

PARENT_ENV = "GPUPOOL_PARENT_PID"
PR_SET_PDEATHSIG = 1
POLL_S = 0.5
KILL_AFTER_S = 20.0  # a child that has not left this long after SIGTERM is killed


def preexec(parent: int) -> Callable[[], None]:
    """What the child runs between fork and exec: ask the kernel for SIGTERM when `parent` dies."""
    def setup() -> None:
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            except (OSError, AttributeError):
                pass  # watch_parent still covers it
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return setup


def watch_parent() -> None:
    """If started by a parent that wants it (GPUPOOL_PARENT_PID), leave when that parent is gone."""
    raw = os.environ.pop(PARENT_ENV, "")  # popped: this process's own children have another parent
    if not raw.isdigit():
        return
    parent = int(raw)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(KILL_AFTER_S)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
