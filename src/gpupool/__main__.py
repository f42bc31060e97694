"""`python -m gpupool` is the `gpupool` command."""

from gpupool.cli import app

app()
