"""`python -m gpupool` is the `gpupool` command."""

from gpupool.lifeline import watch_parent

watch_parent()  # a devnet's children leave with it (lifeline.py)

from gpupool.cli import app  # noqa: E402 - after the watch: a child whose parent is gone leaves at once

app()
