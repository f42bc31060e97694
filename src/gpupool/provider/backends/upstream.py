"""The `upstream` backend: forward to a local OpenAI-compatible engine.

This is how a serious provider runs: vLLM, Ollama, llama.cpp's server or TGI does
the batching and the GPU work; gpupool adds the network, routing and payment.

Spec: the engine's base URL, with optional query parameters
    `model` (the engine's model name; default: the served name),
    `task`  (`generate`, the default, or `embeddings`),
    `key`   (name of an environment variable holding the engine's API key),
    `accepts` (`image`: the engine is a vision model, e.g. vLLM or Ollama serving a VLM; the
            offer then says it reads images and they are passed through).
e.g. `--serve llama3=upstream:http://127.0.0.1:11434/v1?model=llama3.1:8b`,
     `--serve vlm=upstream:http://127.0.0.1:8001/v1?model=Qwen/Qwen2-VL-2B-Instruct&accepts=image`

Images travel in OpenAI's shapes, as data URLs: a chat message's images become `image_url`
parts between its text parts (at the offsets the client placed them), an embedding input
that is an image becomes its data URL.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import msgspec

from gpupool.model_results import BackendError, EmbedResult, GenDone, TextDelta
from gpupool.protocol import ChatMessage, EmbedPayload, GeneratePayload, Image, ModelOffer
from gpupool.provider.backends.base import Backend, GenEvent


class UpstreamBackend(Backend):
    kind = "upstream"

    def __init__(self, name: str, spec: str = ""):
        super().__init__(name, spec)
        if not spec:
            raise ValueError("upstream needs the engine's base URL, e.g. upstream:http://127.0.0.1:8001/v1")
        parts = urlsplit(spec)
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.upstream_model = params.get("model", name)
        task = params.get("task", "generate")
        if task not in ("generate", "embeddings"):
            raise ValueError(f"upstream task must be 'generate' or 'embeddings', not {task!r}")
        self.task = task  # type: ignore[assignment]
        accepts = params.get("accepts", "text")
        if accepts not in ("text", "image", "text,image"):
            raise ValueError(f"upstream accepts must be 'image' (a vision engine) or 'text', not {accepts!r}")
        self.accepts = ["text", "image"] if "image" in accepts else []
        key = os.environ.get(params["key"], "") if "key" in params else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=600.0)
        self._dimensions = 0

    async def start(self) -> None:
        # Fail at start-up, not on the first client request, if the engine is absent.
        try:
            resp = await self._client.get("/models")
        except httpx.HTTPError as exc:
            raise RuntimeError(f"upstream engine at {self.base_url} is unreachable: {exc}") from exc
        if resp.status_code >= 400:
            raise RuntimeError(f"upstream engine at {self.base_url}/models answered {resp.status_code}")

    async def close(self) -> None:
        await self._client.aclose()

    def offer(self) -> ModelOffer:
        return ModelOffer(
            name=self.name,
            task=self.task,
            backend=self.kind,
            description=f"upstream engine model {self.upstream_model!r}",
            dimensions=self._dimensions,
            accepts=self.accepts,
        )

    async def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            resp = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise BackendError("upstream_unreachable", f"upstream engine: {exc}", retryable=True) from exc
        if resp.status_code >= 400:
            raise BackendError(
                "upstream_error",
                f"upstream engine answered {resp.status_code}: {resp.text[:300]}",
                retryable=resp.status_code >= 500 or resp.status_code == 429,
            )
        return resp

    async def embed(self, payload: EmbedPayload, urgent: bool = True) -> EmbedResult:
        if self.task != "embeddings":
            return await super().embed(payload, urgent)
        resp = await self._post(
            "/embeddings",
            {"model": self.upstream_model, "input": embedding_input(payload), "encoding_format": "float"},
        )
        data = resp.json()
        rows = sorted(data["data"], key=lambda d: d["index"])
        out = bytearray()
        dims = 0
        for row in rows:
            emb = row["embedding"]
            if isinstance(emb, str):  # engines that ignore encoding_format=float
                raw = base64.b64decode(emb)
                dims = len(raw) // 4
                out += raw
            else:
                dims = len(emb)
                out += struct.pack(f"<{dims}f", *emb)
        self._dimensions = dims
        usage = data.get("usage") or {}
        return EmbedResult(bytes(out), dims, int(usage.get("prompt_tokens", 0)))

    async def generate(self, payload: GeneratePayload) -> AsyncIterator[GenEvent]:  # type: ignore[override]
        if self.task != "generate":
            raise BackendError("unsupported_task", f"model {self.name!r} serves embeddings")
        body: dict = {
            "model": self.upstream_model,
            "max_tokens": payload.max_tokens,
            "temperature": payload.temperature,
            "top_p": payload.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if payload.seed is not None:
            body["seed"] = payload.seed
        if payload.stop:
            body["stop"] = payload.stop
        if payload.messages:
            path = "/chat/completions"
            body["messages"] = [openai_message(m) for m in payload.messages]
            if payload.continue_text:
                # vLLM's (and others') way to extend a partial assistant answer.
                body["messages"].append({"role": "assistant", "content": payload.continue_text})
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
        else:
            path = "/completions"
            body["prompt"] = payload.prompt + payload.continue_text
        finish, prompt_tokens, completion_tokens = "stop", 0, 0
        try:
            async with self._client.stream("POST", path, json=body) as resp:
                if resp.status_code >= 400:
                    text = (await resp.aread()).decode(errors="replace")
                    raise BackendError(
                        "upstream_error",
                        f"upstream engine answered {resp.status_code}: {text[:300]}",
                        retryable=resp.status_code >= 500 or resp.status_code == 429,
                    )
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = msgspec.json.decode(data)
                    if "error" in event:
                        raise BackendError("upstream_error", str(event["error"])[:300], retryable=True)
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                        if piece:
                            completion_tokens += 1
                            yield TextDelta(piece)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    usage = event.get("usage")
                    if usage:
                        prompt_tokens = int(usage.get("prompt_tokens", 0))
                        completion_tokens = int(usage.get("completion_tokens", completion_tokens))
        except httpx.HTTPError as exc:
            raise BackendError("upstream_unreachable", f"upstream engine: {exc}", retryable=True) from exc
        yield GenDone(finish, prompt_tokens, completion_tokens)


def data_url(image: Image) -> str:
    return f"data:{image.media_type};base64," + base64.b64encode(image.data).decode()


def openai_message(m: ChatMessage) -> dict:
    """A message in OpenAI's shape: plain content, or text and image_url parts in the client's order."""
    out: dict = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    if m.images:
        parts: list[dict] = []
        at = 0
        for image in sorted(m.images, key=lambda i: len(m.content) if i.at < 0 else i.at):
            cut = len(m.content) if image.at < 0 else min(image.at, len(m.content))
            if cut > at:
                parts.append({"type": "text", "text": m.content[at:cut]})
                at = cut
            parts.append({"type": "image_url", "image_url": {"url": data_url(image)}})
        if at < len(m.content):
            parts.append({"type": "text", "text": m.content[at:]})
        out["content"] = parts
    return out


def embedding_input(payload: EmbedPayload) -> list[str]:
    """The inputs with each image in its slot as a data URL (text inputs as they are)."""
    inputs = list(payload.inputs)
    for image in payload.images:
        if 0 <= image.at < len(inputs):
            inputs[image.at] = data_url(image)
    return inputs
