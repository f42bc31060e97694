"""Comparators for answers about images (pure; numpy for the embeddings).

* OCR (the `ocr` backend): the text found in the images, plain (lines in reading order)
  or as JSON (`ocr_json`: boxes, text, confidence per line). `ocr_text` reads the plain
  text out of either form; `compare_ocr` judges it against a reference reading by
  normalised edit distance (Levenshtein distance over the longer text's length).
* Image embeddings (the `clip` backend): cosine per row like text embeddings, with the
  image rows' own thresholds (`compare_image_embeddings`).

The tolerances come from measured honest disagreement (docs/verification.md, "Images"):
the same answer computed in float32 and bfloat16, and with 1, 2 and 4 threads. They leave
a wide margin over what was measured, because a GPU's kernels (ONNX Runtime's CUDA
provider, cuDNN convolutions) reorder sums again; the cheaters they must catch (made-up
or half-cut text, random or 1-bit vectors) sit far beyond them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from gpupool.verify.comparators import compare_embeddings
from gpupool.verify.judgement import PASS, Judgement, combine, fail

# OCR: measured honest distance 0.0 (threads 1/2/4, ONNX graph optimisations on/off; see
# docs/verification.md). A misread character or two per line on other hardware passes.
OCR_MAX_DISTANCE = 0.10
# Beyond this the answer is another text (made up, another image, half of it): hard.
OCR_HARD_DISTANCE = 0.40
# Image rows: measured honest cosine >= 0.99994 (tiny-clip float32 vs bfloat16) and 1.0
# across thread counts. Below the hard bound is another model or noise.
IMAGE_EMBEDDING_THRESHOLD = 0.99
IMAGE_HARD_EMBEDDING_THRESHOLD = 0.9
# Texts longer than this are compared word by word (edit distance is quadratic).
CHARACTER_LIMIT = 4000


def ocr_json(images: list[list[tuple[str, float, list[list[int]]]]]) -> str:
    """The JSON form of an OCR answer: per image, its lines (text, confidence, box) in reading order."""
    return json.dumps({"images": [
        {"lines": [{"text": text, "confidence": round(conf, 4), "box": box} for text, conf, box in lines]}
        for lines in images]}, ensure_ascii=False)


def ocr_text(answer: str, json_form: bool) -> str:
    """The plain text of an OCR answer: lines joined by newlines, images by blank lines.
    ValueError when `json_form` and the answer is not the JSON form `ocr_json` writes."""
    if not json_form:
        return answer
    try:
        data: Any = json.loads(answer)
        images = data["images"]
        return "\n\n".join("\n".join(str(line["text"]) for line in image["lines"]) for image in images)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not an OCR JSON answer: {exc}") from None


def ocr_words(text: str) -> int:
    """Words in an OCR answer's plain text: its completion usage (a checker recounts it)."""
    return len(text.split())


def edit_distance(a: list[str] | str, b: list[str] | str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), one row at a time."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def normalised_distance(provided: str, reference: str) -> float:
    """Edit distance over the longer text's length, on whitespace-normalised text (0 equal, 1 unrelated)."""
    a, b = " ".join(provided.split()), " ".join(reference.split())
    if max(len(a), len(b)) > CHARACTER_LIMIT:
        wa, wb = a.split(), b.split()
        return edit_distance(wa, wb) / max(len(wa), len(wb), 1)
    return edit_distance(a, b) / max(len(a), len(b), 1)


def compare_ocr(provided: str, reference: str, max_distance: float = OCR_MAX_DISTANCE,
                hard_distance: float = OCR_HARD_DISTANCE) -> Judgement:
    """Judgement of an OCR reading (plain text) against the reference's; score = 1 - distance."""
    distance = normalised_distance(provided, reference)
    if distance <= max_distance:
        return Judgement(passed=True, score=1.0 - distance)
    return fail(f"ocr_mismatch: edit distance {distance:.2f}", hard=distance >= hard_distance,
                score=1.0 - distance)


def check_ocr_usage(prompt_tokens: int, completion_tokens: int, images: int, text: str) -> Judgement:
    """An OCR receipt bills one prompt unit per image and one completion unit per word delivered."""
    words = ocr_words(text)
    if prompt_tokens > images or completion_tokens > words:
        return fail(f"usage_inflated: reported {prompt_tokens} images and {completion_tokens} words, "
                    f"delivered {images} images and {words} words", hard=True)
    return PASS


def compare_image_embeddings(provided: np.ndarray, reference: np.ndarray, image_rows: list[int]) -> Judgement:
    """Rows that are images against the image thresholds, the other rows against the text ones."""
    p, r = np.atleast_2d(provided), np.atleast_2d(reference)
    if p.shape != r.shape:
        return fail(f"shape_mismatch: provided {p.shape}, reference {r.shape}", hard=True)
    text_rows = [i for i in range(p.shape[0]) if i not in set(image_rows)]
    verdicts = [compare_embeddings(p[image_rows], r[image_rows], IMAGE_EMBEDDING_THRESHOLD,
                                   IMAGE_HARD_EMBEDDING_THRESHOLD)] if image_rows else []
    if text_rows:
        verdicts.append(compare_embeddings(p[text_rows], r[text_rows]))
    return combine(*verdicts)
