"""`python -m gpupool` is the `gpupool` command."""

import sys

from gpupool.lifeline import watch_parent

# httpx imports its own command-line tool (click, rich, pygments) whenever those are installed:
# ~50 ms of CPU in every gpupool process, none of which runs that tool.
sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]

watch_parent()  # a devnet's children leave with it (lifeline.py)

from gpupool.cli import app  # noqa: E402 - after the watch: a child whose parent is gone leaves at once

app()
