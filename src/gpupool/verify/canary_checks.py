"""Judging a canary's answer against its known one (pure; numpy for the vectors).

A canary (`gateway/trust/canaries.py`) is an answer a checker passed, sent again to
another provider; the gateway compares the two itself, with the audits' tolerances, so
a canary fails exactly where an audit would:

* embeddings: cosine per row (`compare_embeddings`); rows that are images get the image
  thresholds (`image_checks.compare_image_embeddings`: pass >= 0.99, hard < 0.90);
* text read off images (the `ocr` backend): normalised edit distance of the plain texts
  (`image_checks.compare_ocr`: pass <= 0.10, hard >= 0.40), the JSON form read as its
  lines, and the usage recounted (one unit per image, one per word delivered);
* greedy generation otherwise: the exact text (hard when even the first character differs).

The tolerances are the audits' (measured honest disagreement: docs/verification.md,
"Images"), so a canary never costs an honest provider more than an audit does. Canary
against canary, measured (2026-12-06, CPU): tiny-clip in float32 against bfloat16 on a
request of two texts and two images, lowest cosine 0.99988 (pass >= 0.99); PP-OCRv4 with 1
against 2 ONNX Runtime threads on two rendered labels, distance 0.0 in both forms (pass
<= 0.10).
"""

from __future__ import annotations

from gpupool.protocol import Done, EmbedPayload, GeneratePayload, Payload, image_count
from gpupool.verify.judgement import Judgement, combine, fail



def judge_canary(payload: Payload, known_text: str, known_vectors: bytes, known_dimensions: int,
                 done: Done, text: str, reads_images: bool) -> Judgement:
    """The canary answer (`done`, with its full `text`) against the known answer.

    `reads_images`: the model reads text off images (the source's offer names the `ocr`
    backend), so its answers are compared as readings, not character for character."""
    if isinstance(payload, EmbedPayload):
        return _vectors(payload, known_vectors, known_dimensions, done)
    if reads_images:
        return _reading(payload, known_text, done, text)
    if text == known_text:
        return Judgement(passed=True, reason="canary_match")
    return fail("canary_text_mismatch", hard=not text[:1] or text[:1] != known_text[:1])


def _vectors(payload: EmbedPayload, known: bytes, dimensions: int, done: Done) -> Judgement:
    import numpy as np

    from gpupool.verify.comparators import compare_embeddings
    from gpupool.verify.image_checks import compare_image_embeddings

    n = len(payload.inputs)
    if done.dimensions != dimensions:
        return fail("wrong_dimensions", hard=True)
    if dimensions <= 0 or len(done.vectors) != 4 * n * dimensions or len(known) != 4 * n * dimensions:
        return fail(f"malformed_vectors: {len(done.vectors)} bytes for {n} rows of {dimensions}", hard=True)
    provided = np.frombuffer(done.vectors, "<f4").reshape(n, dimensions)
    expected = np.frombuffer(known, "<f4").reshape(n, dimensions)
    if payload.images:
        return compare_image_embeddings(provided, expected, [image.at for image in payload.images])
    return compare_embeddings(provided, expected)


def _reading(payload: GeneratePayload, known_text: str, done: Done, text: str) -> Judgement:
    from gpupool.verify.image_checks import check_ocr_usage, compare_ocr, ocr_text

    json_form = payload.response_format == "json_object"
    try:
        provided = ocr_text(text, json_form)
    except ValueError as exc:
        return fail(f"malformed_answer: {exc}", hard=True)
    usage = done.receipt.usage
    return combine(check_ocr_usage(usage.prompt_tokens, usage.completion_tokens, image_count(payload), provided),
                   compare_ocr(provided, ocr_text(known_text, json_form)))
