"""gpupool: pool idle GPUs from many owners into one OpenAI-compatible inference network."""

__version__ = "0.1.0"
