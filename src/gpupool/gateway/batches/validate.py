"""Check a batch input file line by line, before anything is stored.

Each line is one request, as OpenAI documents it:

    {"custom_id": "sku-1", "method": "POST", "url": "/v1/embeddings",
     "body": {"model": "minilm", "input": "red running shoes"}}

The body is validated by the same pydantic models the HTTP routes use, so a batch
accepts exactly what a direct request would, images included (data URLs in an
embeddings `input` or a chat `image_url` part, checked with the operator's limits
without decoding pixels; only for models that read images). The first problem found
is raised as one `InvalidRequest` naming the line ("line 3: ..."); nothing is created.
With images, call it off the event loop.

    items = parse_file(raw, known_models={"minilm": "embeddings"}, image_models={"tiny-clip"})
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from gpupool import errors
from gpupool.batch.policy import pack_units
from gpupool.gateway.edge import openai_api
from gpupool.images import DEFAULT_LIMITS, ImageLimits

ENDPOINTS = {"/v1/embeddings": "embeddings", "/v1/chat/completions": "generate", "/v1/completions": "generate"}
MAX_ITEMS = 50_000  # as OpenAI: larger jobs are split into several batches (the SDK does)
MAX_CUSTOM_ID = 512
MAX_EMBEDDING_INPUTS = 2048  # per line, as a direct /v1/embeddings request
DEFAULT_MAX_TOKENS = 256  # as a direct chat request


@dataclass(frozen=True)
class Item:
    line: int  # 1-based
    custom_id: str
    url: str
    model: str
    body: bytes  # the request body, re-encoded compactly
    weight: int  # inputs (embeddings) or 1
    text_bytes: int  # input text size: token bounds and estimates
    images: int = 0  # images the request carries
    units: int = 1  # its share of a packed request (policy.pack_units: images count more)


def _bad(line: int, message: str, param: str | None = None) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"line {line}: {message}", param=param, code="invalid_batch_line")


def parse_file(raw: bytes, known_models: dict[str, str], max_items: int = MAX_ITEMS,
               image_models: frozenset[str] | set[str] = frozenset(),
               limits: ImageLimits = DEFAULT_LIMITS) -> list[Item]:
    """Every line as an `Item`; `known_models` maps model name to task ("embeddings"/"generate"),
    `image_models` names those that read images."""
    items: list[Item] = []
    seen: set[str] = set()
    lines = raw.split(b"\n")
    if lines and lines[-1].strip() == b"":
        lines.pop()
    if not lines:
        raise errors.InvalidRequest("the file is empty: expected one JSON request per line", param="file")
    if len(lines) > max_items:
        raise errors.InvalidRequest(f"the file has {len(lines):,} lines; a batch may have at most {max_items:,} "
                                    "requests (split it into several batches)", param="file")
    for n, text in enumerate(lines, start=1):
        items.append(parse_line(n, text, known_models, seen, image_models, limits))
    return items


def parse_line(n: int, text: bytes, known_models: dict[str, str], seen: set[str],
               image_models: frozenset[str] | set[str] = frozenset(), limits: ImageLimits = DEFAULT_LIMITS) -> Item:
    if not text.strip():
        raise _bad(n, "empty line; expected a JSON object")
    try:
        obj = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise _bad(n, f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _bad(n, "expected a JSON object with custom_id, method, url and body")
    extra = set(obj) - {"custom_id", "method", "url", "body"}
    if extra:
        raise _bad(n, f"unknown field {sorted(extra)[0]!r}", param=sorted(extra)[0])
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID:
        raise _bad(n, f"custom_id must be a non-empty string of at most {MAX_CUSTOM_ID} characters",
                   param="custom_id")
    if cid in seen:
        raise _bad(n, f"duplicate custom_id {cid[:80]!r}: each request needs its own", param="custom_id")
    seen.add(cid)
    if obj.get("method") != "POST":
        raise _bad(n, "method must be \"POST\"", param="method")
    url = obj.get("url")
    if url not in ENDPOINTS:
        raise _bad(n, f"unsupported url {str(url)[:80]!r}; one of {', '.join(ENDPOINTS)}", param="url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _bad(n, "body must be a JSON object (the request's body)", param="body")
    raw_body = msgspec.json.encode(body)
    try:
        if url == "/v1/embeddings":
            req = openai_api.parse(openai_api.EmbeddingRequest, raw_body)
            image_param = req.image_param()
            payload = req.payload(MAX_EMBEDDING_INPUTS, images=limits)
            weight, size = len(payload.inputs), sum(len(x.encode()) for x in payload.inputs)
            sizes = [len(image.data) for image in payload.images]
            units = pack_units(weight - len(sizes), sizes)
        elif url == "/v1/chat/completions":
            chat = openai_api.parse(openai_api.ChatCompletionRequest, raw_body)
            if chat.stream:
                raise errors.InvalidRequest("stream: batch requests cannot stream", param="stream")
            image_param = chat.image_param()
            gen = chat.payload(DEFAULT_MAX_TOKENS, images=limits)
            req, weight, size = chat, 1, sum(len(m.content.encode()) for m in gen.messages)
            sizes, units = [len(image.data) for m in gen.messages for image in m.images], 1
        else:
            comp = openai_api.parse(openai_api.CompletionRequest, raw_body)
            if comp.stream:
                raise errors.InvalidRequest("stream: batch requests cannot stream", param="stream")
            gen = comp.payload()
            req, weight, size, sizes, units, image_param = comp, 1, len(gen.prompt.encode()), [], 1, ""
    except errors.InvalidRequest as exc:
        raise _bad(n, exc.message, param=f"body.{exc.param}" if exc.param else "body") from None
    if req.gpupool:
        raise _bad(n, "gpupool routing options are set per batch (metadata), not per line", param="body.gpupool")
    task = known_models.get(req.model)
    if task is None:
        raise _bad(n, f"the model {req.model[:80]!r} does not exist on this gateway", param="body.model")
    if task != ENDPOINTS[url]:
        raise _bad(n, f"the model {req.model[:80]!r} serves {task}, not {url}", param="url")
    if image_param and req.model not in image_models:
        raise _bad(n, f"{image_param}: model {req.model[:80]!r} does not accept images (it reads text only)",
                   param=f"body.{image_param}")
    return Item(n, cid, url, req.model, raw_body, weight, size, len(sizes), units)
