"""One shard of a batch: the items a run carries, the one provider request built from their lines,
and each item's output or error line from the answer.

Embeddings lines are packed into one request (their images, data URLs in `input`, move to
the packed request's indexes); a generation line is a request of its own. The shard is
rebuilt from the stored lines, which were checked at upload with the operator's image
limits; `Shard.build` decodes the images again, so the runner calls it off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from gpupool.batch import policy
from gpupool.gateway.batches.store import Claimed, Finished
from gpupool.gateway.batches.tables import BatchRow
from gpupool.gateway.batches.validate import DEFAULT_MAX_TOKENS
from gpupool.gateway.dispatch.dispatcher import Outcome
from gpupool.gateway.edge import openai_api
from gpupool.images import MAX_REQUEST_IMAGE_BYTES, ImageLimits
from gpupool.market import pricing
from gpupool.protocol import EmbedPayload, Image, Payload

ENC = msgspec.json.Encoder()
# The lines were checked at upload with the operator's limits (which may have changed since):
# a rebuilt request is held only to what the wire carries.
RUN_IMAGE_LIMITS = ImageLimits(max_bytes=MAX_REQUEST_IMAGE_BYTES, max_pixels=1 << 40, max_side=1 << 20)


def item_id(batch_id: str, idx: int) -> str:
    return f"batch_req_{batch_id.removeprefix('batch_')}_{idx}"


def error_line(batch_id: str, idx: int, custom_id: str, code: str, message: str,
               status: int | None = None, request_id: str = "") -> bytes:
    response = None if status is None else {"status_code": status, "request_id": request_id,
                                            "body": {"error": {"message": message, "type": "invalid_request_error"
                                                              if status < 500 else "server_error",
                                                              "param": None, "code": code}}}
    return ENC.encode({"id": item_id(batch_id, idx), "custom_id": custom_id, "response": response,
                       "error": {"code": code, "message": message}})



@dataclass
class Shard:
    """The items of one run and the one provider request that carries them."""

    run_id: str
    items: list[Claimed]
    payload: Payload
    bodies: list[Any]
    tokens_in: int
    max_out: int
    weights: list[int]
    images: int = 0  # images the request carries: priced per image, and held for (pricing.hold_bound)

    @classmethod
    def build(cls, b: BatchRow, run_id: str, items: list[Claimed]) -> Shard:
        """The shard's one request; images are decoded from their data URLs again (checked when the
        file was uploaded): call it off the event loop."""
        if b.endpoint == "/v1/embeddings":
            bodies: list[Any] = [openai_api.EmbeddingRequest.model_validate_json(c.body) for c in items]
            inputs: list[str] = []
            images: list[Image] = []
            weights = []
            for body in bodies:
                p = body.payload(1 << 20, images=RUN_IMAGE_LIMITS)
                images += [msgspec.structs.replace(image, at=image.at + len(inputs)) for image in p.images]
                inputs += p.inputs
                weights.append(sum(len(x.encode()) for x in p.inputs) + len(p.images) * policy.IMAGE_COST_BYTES)
            payload: Payload = EmbedPayload(inputs=inputs, images=images)
            tokens = pricing.input_token_bound(sum(len(x.encode()) for x in inputs), len(inputs))
            return cls(run_id, items, payload, bodies, tokens, 0, weights, len(images))
        (c,) = items  # generation: one item per run
        if b.endpoint == "/v1/chat/completions":
            chat = openai_api.ChatCompletionRequest.model_validate_json(c.body)
            gen = chat.payload(DEFAULT_MAX_TOKENS, images=RUN_IMAGE_LIMITS)
            size = sum(len(m.content.encode()) for m in gen.messages)
            n_images = sum(len(m.images) for m in gen.messages)
            return cls(run_id, items, gen, [chat], pricing.input_token_bound(size, len(gen.messages)),
                       gen.max_tokens, [size], n_images)
        comp = openai_api.CompletionRequest.model_validate_json(c.body)
        gen = comp.payload()
        size = len(gen.prompt.encode())
        return cls(run_id, items, gen, [comp], pricing.input_token_bound(size, 0), gen.max_tokens, [size])

    def results(self, b: BatchRow, out: Outcome, cost: int) -> list[Finished]:
        """Each item's output line; a packed request's usage and cost split by input size."""
        done = out.done
        u = done.receipt.usage
        costs = policy.split_cost(cost, self.weights)
        prompts = policy.split_cost(u.prompt_tokens, self.weights)
        finished = []
        if b.endpoint != "/v1/embeddings":
            (c,) = self.items
            build: Callable[..., dict[str, Any]] = (openai_api.chat_response if b.endpoint == "/v1/chat/completions"
                                                    else openai_api.completion_response)
            body = build(self.run_id, b.model, out.text, done.receipt.finish_reason, u.prompt_tokens,
                         u.completion_tokens, out.provider, cost)
            return [Finished(c.idx, True, _ok_line(b.id, c, self.run_id, body), cost, u.prompt_tokens,
                             u.completion_tokens, out.provider)]
        row = done.dimensions * 4
        at = 0
        for i, (c, req) in enumerate(zip(self.items, self.bodies)):
            n = 1 if isinstance(req.input, str) else len(req.input)
            vectors = done.vectors[at * row:(at + n) * row]
            at += n
            if req.dimensions is not None and req.dimensions != done.dimensions:
                msg = f"{b.model!r} produces {done.dimensions} dimensions"
                finished.append(Finished(c.idx, False, error_line(b.id, c.idx, c.custom_id, "invalid_request", msg,
                                                                  400, self.run_id), costs[i], prompts[i], 0,
                                         out.provider))
                continue
            body = openai_api.embedding_response(b.model, vectors, done.dimensions, n, req.encoding_format, prompts[i],
                                         costs[i])
            finished.append(Finished(c.idx, True, _ok_line(b.id, c, self.run_id, body), costs[i], prompts[i], 0,
                                     out.provider))
        return finished


def _ok_line(batch_id: str, c: Claimed, run_id: str, body: dict[str, Any]) -> bytes:
    return ENC.encode({"id": item_id(batch_id, c.idx), "custom_id": c.custom_id,
                       "response": {"status_code": 200, "request_id": run_id, "body": body}, "error": None})
