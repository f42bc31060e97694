"""Whether a provider's answer can be accepted: its receipt must bind it to the request we sent.

    problem = receipt_problem(session, request_id, model, payload, done, text)   # None: accepted

The dispatcher checks every answer with this before it reaches a client or a bill;
what the client pays comes from the receipt, so its usage is bounded here too.
"""

from __future__ import annotations

from gpupool import protocol
from gpupool.gateway.payload_size import PayloadSize
from gpupool.gateway.peers.session import ProviderSession
from gpupool.protocol import Done, EmbedPayload, Payload


def receipt_problem(session: ProviderSession, request_id: str, model: str, payload: Payload, done: Done,
                    text: str, check_signature: bool = True) -> str | None:
    """Why this answer cannot be accepted, or None if its receipt binds it to our request.

    The hashes are always checked (cheap). Receipts normally come unsigned and are
    signed in bulk by the provider's next Statement, which billing waits for
    before charging; a receipt that carries its own signature has a sample of
    those checked inline (`receipt_verify_rate`) and all of them before charging.
    """
    r = done.receipt
    if r.request_id != request_id or done.request_id != request_id:
        return "receipt is for another request"
    if r.node_id != session.node_id or r.model != model:
        return "receipt names another provider or model"
    # What the client pays for comes from here: never more prompt than the request could hold.
    ceiling = PayloadSize.of(payload).prompt_token_ceiling
    if r.usage.prompt_tokens > ceiling:
        return f"receipt claims {r.usage.prompt_tokens} prompt tokens; the request holds at most {ceiling}"
    if r.input_hash != protocol.payload_hash(payload):
        return "receipt input hash does not match the request"
    if isinstance(payload, EmbedPayload):
        expected_len = len(payload.inputs) * done.dimensions * 4
        if done.dimensions <= 0 or len(done.vectors) != expected_len:
            return "embedding result has the wrong shape"
        output = done.vectors
    else:
        if done.text and done.text != text:
            return "streamed chunks do not add up to the final text"
        output = text.encode()
    if r.output_hash != protocol.output_hash(output):
        return "receipt output hash does not match the output"
    if (done.token_ids or r.tokens_hash) and r.tokens_hash != protocol.tokens_hash(done.token_ids, done.logprobs):
        return "receipt tokens hash does not match the tokens sent"
    if check_signature and r.signature and not protocol.verify_claim(r, session.public_key):
        return "receipt signature does not verify"
    return None
