"""Image and text embeddings in one space from a local CLIP model (transformers `CLIPModel`).

`CLIPBackend` serves `NAME=clip:DIR` (a Hugging Face CLIP directory: config.json,
weights, tokenizer, preprocessor_config.json) or `NAME=clip:tiny-clip`, the untrained
demo model `provider/tiny_clip.py` builds. An `EmbedPayload` may mix texts and images
(`payload.images`, each filling the empty input at its `at`); every row is L2-normalised,
so cosine is a dot product and text rows rank image rows.

Why transformers and not OpenCLIP: `open_clip_torch` needs torchvision, and the only
torchvision wheels for torch 2.13 here are the CUDA builds, which fail to import next to
the CPU torch (`operator torchvision::nms does not exist`). transformers' CLIPModel loads
the same architecture (OpenAI and LAION checkpoints converted to Hugging Face form) with
what the `ml` extra already installs. Preprocessing is ours (resize the short side,
centre crop, normalise; bicubic in Pillow): the same on every machine and version.

Usage: text inputs count their tokens (with start and end tokens); an image counts the
positions its vision tower reads (patches + 1), the same on every machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpupool.images import ImageError, check_request, decode_rgb
from gpupool.model_results import BackendError, EmbedResult
from gpupool.protocol import EmbedPayload, ModelOffer
from gpupool.provider.backends.base import Backend, ModelThread
from gpupool.provider.tiny_clip import CLIP_MEAN, CLIP_STD, create_tiny_clip, default_tiny_clip_path

TINY_CLIP_ALIAS = "tiny-clip"
MAX_INPUTS = 2048


class CLIPBackend(Backend):
    """Embeds texts and images with a CLIP model; `spec` is its directory or "tiny-clip"."""

    task = "embeddings"
    kind = "clip"

    def __init__(self, name: str, spec: str = ""):
        super().__init__(name, spec)
        self._thread = ModelThread(name)
        self._model: Any = None
        self._tokenizer: Any = None
        self._path: Path | None = None
        self._device = "cpu"
        self._dimensions = 0
        self._image_size = 224
        self._image_tokens = 0
        self._max_text = 77
        self._mean: Any = None
        self._std: Any = None
        self._untrained = False
        self.dtype = "float32"  # "bfloat16": measuring honest disagreement (docs/verification.md)

    def _resolve_path(self) -> Path:
        if self.spec in ("", TINY_CLIP_ALIAS):
            return create_tiny_clip(default_tiny_clip_path())
        path = Path(self.spec).expanduser()
        if not (path / "config.json").is_file():
            raise BackendError("model_not_found", f"{path} is not a Hugging Face CLIP directory")
        return path

    def _load(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import numpy as np
        import torch
        from transformers import AutoTokenizer, CLIPModel

        from gpupool.provider.backends.generate import configure_torch_threads

        configure_torch_threads()
        path = self._resolve_path()
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=getattr(torch, self.dtype))
        model.to(self._device).eval()
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        vision = model.config.vision_config
        self._image_size = int(vision.image_size)
        self._image_tokens = (self._image_size // int(vision.patch_size)) ** 2 + 1
        self._max_text = int(model.config.text_config.max_position_embeddings)
        self._dimensions = int(model.config.projection_dim)
        pre = path / "preprocessor_config.json"
        conf = json.loads(pre.read_text()) if pre.is_file() else {}
        self._mean = np.asarray(conf.get("image_mean", CLIP_MEAN), dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(conf.get("image_std", CLIP_STD), dtype=np.float32).reshape(3, 1, 1)
        readme = path / "README.md"
        self._untrained = readme.is_file() and "UNTRAINED" in readme.read_text(errors="replace")
        self._path = path
        self._model = model

    async def start(self) -> None:
        if self.spec not in ("", TINY_CLIP_ALIAS):
            self._resolve_path()  # a mistyped directory fails now, before torch is imported
        await self._thread.call(self._load)

    async def close(self) -> None:
        self._model = None
        self._thread.shutdown()

    def offer(self) -> ModelOffer:
        if self._path is None:
            raise BackendError("engine_down", f"model {self.name!r} is not loaded", retryable=True)
        what = "untrained demo CLIP (random weights)" if self._untrained else "CLIP"
        return ModelOffer(
            name=self.name, task="embeddings", backend="clip",
            description=f"{what} image and text embeddings from {self._path.name}, "
                        f"{self._dimensions} dimensions, {self._device}",
            dimensions=self._dimensions, max_input_tokens=self._max_text, accepts=["text", "image"],
        )

    # ------------------------------------------------------------------ embedding

    def _pixels(self, rgb: Any) -> Any:
        """Resize the short side to the model's size (bicubic), centre-crop, normalise: CHW float32."""
        import numpy as np
        from PIL import Image as PILImage

        size = self._image_size
        width, height = rgb.size
        scale = size / min(width, height)
        resized = rgb.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                             PILImage.Resampling.BICUBIC)
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        return (crop.transpose(2, 0, 1) - self._mean) / self._std

    def _encode(self, payload: EmbedPayload) -> tuple[Any, int]:
        """Rows (float32, L2-normalised, one per input) and prompt tokens; on the model thread."""
        import numpy as np
        import torch

        if self._model is None:
            raise BackendError("engine_down", f"model {self.name!r} is not loaded", retryable=True)
        n = len(payload.inputs)
        at = [image.at for image in payload.images]
        if any(not 0 <= i < n for i in at) or len(set(at)) != len(at) or any(payload.inputs[i] for i in at):
            raise BackendError("invalid_input", "each image must fill one empty input (its `at` index)")
        try:
            check_request([len(image.data) for image in payload.images])
            pixels = [self._pixels(decode_rgb(image.data, image.media_type)) for image in payload.images]
        except ImageError as exc:
            raise BackendError("invalid_image", str(exc)) from None
        text_rows = [i for i in range(n) if i not in set(at)]
        rows = np.zeros((n, self._dimensions), dtype=np.float32)
        tokens = len(pixels) * self._image_tokens
        model, dtype = self._model, getattr(torch, self.dtype)
        with torch.inference_mode():
            if text_rows:
                enc = self._tokenizer([payload.inputs[i] for i in text_rows], padding=True, truncation=True,
                                      max_length=self._max_text, return_tensors="pt")
                tokens += int(enc["attention_mask"].sum())
                out = model.text_model(input_ids=enc["input_ids"].to(self._device),
                                       attention_mask=enc["attention_mask"].to(self._device))
                rows[text_rows] = model.text_projection(out.pooler_output).float().cpu().numpy()
            if pixels:
                batch = torch.from_numpy(np.stack(pixels)).to(self._device, dtype)
                out = model.vision_model(pixel_values=batch)
                rows[at] = model.visual_projection(out.pooler_output).float().cpu().numpy()
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(rows, dtype="<f4"), tokens

    async def embed(self, payload: EmbedPayload, urgent: bool = True) -> EmbedResult:
        if not payload.inputs:
            raise BackendError("invalid_input", "inputs must contain at least one text or image")
        if len(payload.inputs) > MAX_INPUTS:
            raise BackendError("invalid_input", f"{len(payload.inputs)} inputs exceeds the limit of {MAX_INPUTS}")
        rows, tokens = await self._thread.call(self._encode, payload)
        return EmbedResult(vectors=rows.tobytes(), dimensions=int(rows.shape[1]), prompt_tokens=tokens)
