"""Text recognition (OCR) on the images of a chat request, with RapidOCR's ONNX models.

`OCRBackend` serves `NAME=ocr` (or `NAME=ocr:DIR` with `det.onnx`, `cls.onnx`, `rec.onnx`
of the PP-OCR family in DIR). The default models, PP-OCRv4 detection and recognition
and the PP-OCR angle classifier, ship inside the `rapidocr-onnxruntime` wheel, so a
provider reads text with nothing downloaded. ONNX Runtime runs them on the CPU, or with
its CUDA provider where onnxruntime-gpu is installed.

It answers a chat request (task "generate") whose messages carry images: the text found
in every image, in reading order (top to bottom by line, left to right within a line;
boxes of one line merged), lines joined by newlines, images by a blank line. With
`response_format="json_object"` the answer is `verify.image_checks.ocr_json`: per image
its lines with text, confidence and box (four corners, pixels). The text of the messages
is not read (the image is the question). PP-OCRv4's recogniser drops many spaces in
English; they are put back where the ink has a space-wide gap between two recognised
characters. Usage: one prompt unit per image, one completion unit per word; `max_tokens`
caps the words (finish "length").
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gpupool.images import ImageError, check_request, decode_rgb
from gpupool.model_results import BackendError, GenDone, TextDelta
from gpupool.protocol import GeneratePayload, Image, ModelOffer
from gpupool.provider.backends.base import Backend, GenEvent, ModelThread
from gpupool.verify.image_checks import ocr_json, ocr_words

Line = tuple[str, float, list[list[int]]]  # text, confidence, box (4 corners)


def reading_order(lines: list[Line]) -> list[list[Line]]:
    """Lines grouped into rows (vertical centre inside the row's first box), each left to right."""
    rows: list[tuple[float, float, list[Line]]] = []  # top, bottom, lines
    for line in sorted(lines, key=lambda ln: (min(p[1] for p in ln[2]), min(p[0] for p in ln[2]))):
        ys = [p[1] for p in line[2]]
        centre = (min(ys) + max(ys)) / 2
        if rows and rows[-1][0] <= centre <= rows[-1][1]:
            rows[-1][2].append(line)
        else:
            rows.append((min(ys), max(ys), [line]))
    return [sorted(row, key=lambda ln: min(p[0] for p in ln[2])) for _, _, row in rows]


# A gap between inked columns is a space when it is this wide relative to the line's height
# and several times the line's typical gap between letters; between two digits (a "1" has
# wide side bearings) it must be wider still.
SPACE_OF_HEIGHT = 0.18
SPACE_OF_LETTER_GAP = 2.0
SPACE_BETWEEN_DIGITS = 1.6


def space_gaps(gray: Any) -> list[tuple[float, float]]:
    """(centre column, width in spaces) of the gaps in a line crop (greyscale) wide enough to be
    spaces, width 1.0 being the narrowest such gap.

    PP-OCRv4's recogniser (trained mostly on Chinese) often drops the spaces of English text
    ("Bestbefore12March2027"); the gaps in the ink do not lie."""
    import numpy as np

    spread = float(gray.max()) - float(gray.min())
    if spread < 30:  # no contrast: no gaps to trust
        return []
    # Ink in the middle half of the rows only: a box reaches into its neighbours' ascenders and
    # descenders, which would bridge the gaps between words.
    height = gray.shape[0]
    band = gray[height // 4: max(height // 4 + 1, 3 * height // 4)].astype(np.float32)
    cols = np.flatnonzero((np.abs(band - float(np.median(gray))) > 0.4 * spread).any(axis=0))
    if cols.size < 2:
        return []
    gaps = np.diff(cols) - 1
    letter_gap = float(np.median(gaps[gaps > 0])) if np.any(gaps > 0) else 0.0
    space = max(2.0, SPACE_OF_HEIGHT * height, SPACE_OF_LETTER_GAP * letter_gap)
    return [(float(cols[i]) + 1 + gaps[i] / 2, float(gaps[i]) / space) for i in np.flatnonzero(gaps > space)]


def with_spaces(text: str, char_boxes: list[Any], gaps: list[tuple[float, float]]) -> str:
    """`text` with a space put in every gap that falls between two characters (by the centres
    the recogniser places them at) and has none yet."""
    if len(char_boxes) != len(text) or not gaps:
        return text
    centres = [sum(p[0] for p in box) / len(box) for box in char_boxes]
    cut = set()
    for x, width in gaps:
        i = sum(1 for c in centres if c < x)  # the gap lies between text[i-1] and text[i]
        if 0 < i < len(text) and text[i - 1] != " " and text[i] != " ":
            if text[i - 1].isdigit() and text[i].isdigit() and width < SPACE_BETWEEN_DIGITS:
                continue
            # A period or comma sits below the band the gaps are measured in, so the gap around
            # it looks wide ("86 .99"): never a space before one, nor after one inside a number.
            if text[i] in ".," or (text[i - 1] in ".," and i >= 2 and text[i - 2].isdigit() and text[i].isdigit()):
                continue
            cut.add(i)
    return "".join((" " if i in cut else "") + ch for i, ch in enumerate(text))


def images_of(payload: GeneratePayload) -> list[Image]:
    return [image for message in payload.messages for image in message.images]


class OCRBackend(Backend):
    """Reads the text in a request's images; `spec` is empty (the bundled PP-OCRv4) or a model DIR."""

    task = "generate"
    kind = "ocr"

    def __init__(self, name: str, spec: str = ""):
        super().__init__(name, spec)
        self._thread = ModelThread(name)
        self._engine: Any = None
        self._device = "cpu"
        self.threads = 0  # ONNX Runtime threads per session; 0: GPUPOOL_TORCH_THREADS (default 1)

    def _options(self) -> dict[str, Any]:
        import onnxruntime

        threads = self.threads or int(os.environ.get("GPUPOOL_TORCH_THREADS", "1") or 1)
        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        self._device = "cuda" if cuda else "cpu"
        options: dict[str, Any] = {"intra_op_num_threads": max(1, threads), "inter_op_num_threads": 1,
                                   "det_use_cuda": cuda, "cls_use_cuda": cuda, "rec_use_cuda": cuda}
        if self.spec:
            folder = Path(self.spec).expanduser()
            for part in ("det", "cls", "rec"):
                options[f"{part}_model_path"] = str(folder / f"{part}.onnx")
        return options

    def _load(self) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            raise BackendError("model_not_found", "the ocr backend needs rapidocr-onnxruntime "
                               "(pip install 'gpupool[ml]')") from None
        self._engine = RapidOCR(**self._options())

    async def start(self) -> None:
        if self.spec:
            folder = Path(self.spec).expanduser()
            missing = [p for p in ("det", "cls", "rec") if not (folder / f"{p}.onnx").is_file()]
            if missing:
                raise BackendError("model_not_found", f"{folder} lacks {', '.join(m + '.onnx' for m in missing)}")
        await self._thread.call(self._load)

    async def close(self) -> None:
        self._engine = None
        self._thread.shutdown()

    def offer(self) -> ModelOffer:
        if self._engine is None:
            raise BackendError("engine_down", f"model {self.name!r} is not loaded", retryable=True)
        models = f"ONNX models in {Path(self.spec).name}" if self.spec else "PP-OCRv4 (bundled)"
        return ModelOffer(name=self.name, task="generate", backend="ocr",
                          description=f"text recognition in images, {models}, {self._device}",
                          max_input_tokens=64, max_output_tokens=4096, accepts=["text", "image"])

    def _read(self, images: list[Image]) -> list[list[Line]]:
        """Lines per image in reading order; on the model thread."""
        import numpy as np

        if self._engine is None:
            raise BackendError("engine_down", f"model {self.name!r} is not loaded", retryable=True)
        pages = []
        for image in images:
            try:
                rgb = decode_rgb(image.data, image.media_type)
            except ImageError as exc:
                raise BackendError("invalid_image", str(exc)) from None
            bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])  # RapidOCR expects BGR, as OpenCV reads
            found, _ = self._engine(bgr, return_word_box=True)
            lines = self._respace(np.asarray(rgb.convert("L")), found or [])
            pages.append([merge_row(row) for row in reading_order(lines)])
        return pages

    @staticmethod
    def _respace(gray: Any, found: list[Any]) -> list[Line]:
        """Lines from RapidOCR's answer (box, text, confidence, character boxes), with the spaces
        the recogniser dropped put back where an upright line's ink has a space-wide gap."""
        lines = []
        for box, text, conf, *rest in found:
            corners = [[round(x), round(y)] for x, y in box]
            xs, ys = [p[0] for p in corners], [p[1] for p in corners]
            x0, x1, y0, y1 = max(0, min(xs)), max(xs) + 1, max(0, min(ys)), max(ys) + 1
            text = str(text)
            if rest and y1 - y0 >= 4 and abs(corners[0][1] - corners[1][1]) <= 0.2 * (y1 - y0):
                gaps = [(x0 + x, width) for x, width in space_gaps(gray[y0:y1, x0:x1])]
                text = with_spaces(text, rest[0] or [], gaps)
            lines.append((text, float(conf), corners))
        return lines

    async def read(self, payload: GeneratePayload) -> list[list[Line]]:
        """The lines of every image in the request, in reading order (a checker's reference call)."""
        images = images_of(payload)
        if not images:
            raise BackendError("invalid_input", f"model {self.name!r} reads images: send at least one "
                               "image part")
        try:
            check_request([len(image.data) for image in images])
        except ImageError as exc:
            raise BackendError("invalid_image", str(exc)) from None
        return await self._thread.call(self._read, images)

    async def generate(self, payload: GeneratePayload) -> AsyncIterator[GenEvent]:  # type: ignore[override]
        pages = await self.read(payload)
        budget, finish = max(payload.max_tokens, 0), "stop"
        kept: list[list[Line]] = []
        for lines in pages:  # whole lines only, so the JSON form stays whole too
            kept.append([])
            for line in lines:
                words = ocr_words(line[0])
                if words > budget:
                    finish = "length"
                    break
                budget -= words
                kept[-1].append(line)
        text = plain_text(kept)
        answer = ocr_json(kept) if payload.response_format == "json_object" else text
        if answer:
            yield TextDelta(answer)
        yield GenDone(finish, len(pages), ocr_words(text))


def merge_row(row: list[Line]) -> Line:
    """One line from the boxes of a row (the detector may split a line at a wide gap): texts
    joined by spaces, the confidence weighted by characters, the box around them all."""
    if len(row) == 1:
        return row[0]
    xs = [p[0] for _, _, box in row for p in box]
    ys = [p[1] for _, _, box in row for p in box]
    chars = sum(max(len(text), 1) for text, _, _ in row)
    conf = sum(c * max(len(text), 1) for text, c, _ in row) / chars
    # Boxes that overlap share characters (the detector cut "Best before" at "befor|e"): drop
    # the overlap's worth of characters from the start of the later box.
    texts, right = [], None
    for text, _, box in row:
        left, end = min(p[0] for p in box), max(p[0] for p in box)
        if right is not None and right > left and text:
            per_char = (end - left) / len(text)
            text = text[round((right - left) / per_char):].lstrip()
        texts.append(text)
        right = end if right is None else max(right, end)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return " ".join(t for t in texts if t), conf, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def plain_text(pages: list[list[Line]]) -> str:
    """Lines of a page joined by newlines, pages by blank lines."""
    return "\n\n".join("\n".join(text for text, _, _ in lines) for lines in pages)
