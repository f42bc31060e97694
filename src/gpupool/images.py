"""Checking and decoding image inputs (PNG, JPEG, WebP), the one way every role does it.

    media_type, data = parse_data_url("data:image/png;base64,...")  # the gateway's edge
    check_header(data, media_type, limits)    # size, type and pixel limits, header only
    check_complete(data, media_type)          # truncation, from the file's structure (no pixels)
    rgb = decode_rgb(data, media_type, limits)   # a loaded PIL image in RGB (backends)

Every failure is an `ImageError` (a ValueError) with a one-line message naming what is
wrong: a type that is not allowed, bytes that are not the type they claim, a file over
the byte limit, a picture over the pixel limit (a decompression bomb: a few KiB that
would decode to gigabytes; refused from the header, before any pixel is decoded), a
truncated or corrupt file. Pillow is imported lazily (the `ml` extra brings it).

The wire carries images as bytes (`protocol.Image`); frames are at most
`protocol.MAX_FRAME_BYTES` (16 MiB) and an audit job carries the request again, so a
request's images together stay under `MAX_REQUEST_IMAGE_BYTES`; an operator sets lower
limits (`ImageLimits`).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp")
# The most image bytes one request may carry on the wire (all images together): half a
# frame, so an audit job (request + answer) still fits one.
MAX_REQUEST_IMAGE_BYTES = 8 * 1024 * 1024
MAX_REQUEST_IMAGES = 64


class ImageError(ValueError):
    """An image input that is refused; the message is one line for the client."""


@dataclass(frozen=True)
class ImageLimits:
    """What one image may be; the operator's settings narrow these defaults."""

    max_bytes: int = 4 * 1024 * 1024
    max_pixels: int = 16_777_216  # 4096 x 4096
    max_side: int = 8192
    media_types: tuple[str, ...] = MEDIA_TYPES


DEFAULT_LIMITS = ImageLimits()


def sniff(data: bytes) -> str:
    """The media type the bytes' signature says, or "" when it is none of MEDIA_TYPES."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return ""


def parse_data_url(url: str, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[str, bytes]:
    """(media type, bytes) of a `data:image/...;base64,...` URL; the size is checked before decoding."""
    head, sep, body = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ImageError("image URL must be a data URL: data:image/png;base64,...")
    media_type = head[5:-7].strip().lower()
    if media_type not in limits.media_types:
        raise ImageError(f"image type {media_type or '(none)'!r} is not accepted; use one of "
                         f"{', '.join(limits.media_types)}")
    if len(body) * 3 // 4 > limits.max_bytes + 3:
        raise ImageError(f"image is over {limits.max_bytes} bytes")
    try:
        data = _b64decode(body)
    except (binascii.Error, ValueError):
        raise ImageError("image data URL is not valid base64") from None
    return media_type, data


# Base64 is decoded this many characters at a time: binascii holds the GIL for a whole call,
# so one call over megabytes would stall the gateway's event loop even from a worker
# thread; between chunks the interpreter lets the loop run.
B64_CHUNK = 1 << 18  # a multiple of 4


def _b64decode(body: str) -> bytes:
    if len(body) <= B64_CHUNK:
        return base64.b64decode(body, validate=True)
    if len(body) % 4:
        raise binascii.Error("incorrect padding")
    chunks = [body[i:i + B64_CHUNK] for i in range(0, len(body), B64_CHUNK)]
    if any("=" in chunk for chunk in chunks[:-1]):  # padding only at the very end, as in one call
        raise binascii.Error("padding inside the data")
    return b"".join(base64.b64decode(chunk, validate=True) for chunk in chunks)


def _open(data: bytes, media_type: str, limits: ImageLimits) -> Any:
    """The PIL image opened lazily (header read, no pixels) after every check that needs no pixels."""
    if media_type not in limits.media_types:
        raise ImageError(f"image type {media_type or '(none)'!r} is not accepted; use one of "
                         f"{', '.join(limits.media_types)}")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image of {len(data)} bytes is over the limit of {limits.max_bytes}")
    found = sniff(data)
    if found != media_type:
        raise ImageError(f"image claims {media_type} but its bytes are {found or 'not an image of an accepted type'}")
    from PIL import Image as PILImage

    try:
        img = PILImage.open(io.BytesIO(data), formats=[media_type.split("/")[1].upper()])
    except PILImage.DecompressionBombError:
        raise ImageError("image is a decompression bomb (too many pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image is not a readable {media_type}: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1 or max(width, height) > limits.max_side or width * height > limits.max_pixels:
        img.close()
        raise ImageError(f"image of {width}x{height} pixels is over the limit ({limits.max_pixels} pixels, "
                         f"{limits.max_side} per side)")
    return img


def check_header(data: bytes, media_type: str, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(width, height) after checking type, signature, bytes and pixels; decodes no pixels."""
    img = _open(data, media_type, limits)
    size: tuple[int, int] = img.size
    img.close()
    return size


def check_complete(data: bytes, media_type: str) -> None:
    """Refuse a truncated file from its structure alone, decoding no pixels (the gateway's edge
    checks every image once; only the provider that runs the model decodes it): a PNG's chunks
    with their CRCs up to IEND, a JPEG's end-of-image marker, a WebP's RIFF length."""
    if media_type == "image/png":
        _check_png_chunks(data)
    elif media_type == "image/jpeg":
        # Some writers pad after the marker; anything cut before it lacks it.
        if b"\xff\xd9" not in data[-64:].rstrip(b"\x00"):
            raise ImageError("image is truncated or corrupt: the JPEG has no end-of-image marker")
    elif media_type == "image/webp":
        declared = int.from_bytes(data[4:8], "little") + 8 if len(data) >= 12 else -1
        if len(data) < declared or declared < 12:
            raise ImageError(f"image is truncated or corrupt: the WebP declares {declared} bytes, "
                             f"{len(data)} were sent")


def _check_png_chunks(data: bytes) -> None:
    import zlib

    at = 8
    while at + 12 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        end = at + 12 + length
        if end > len(data):
            break
        kind = data[at + 4:at + 8]
        if zlib.crc32(data[at + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            raise ImageError(f"image is truncated or corrupt: PNG chunk {kind.decode('latin-1')!r} fails its CRC")
        if kind == b"IEND":
            return
        at = end
    raise ImageError("image is truncated or corrupt: the PNG ends before its IEND chunk")


def check_image(data: bytes, media_type: str, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(width, height) after every check that needs no pixels: `check_header`, then `check_complete`."""
    size = check_header(data, media_type, limits)
    check_complete(data, media_type)
    return size


def decode_rgb(data: bytes, media_type: str, limits: ImageLimits = DEFAULT_LIMITS) -> Any:
    """The image decoded to RGB (a PIL image); ImageError for anything refused or unreadable."""
    from PIL import Image as PILImage

    img = _open(data, media_type, limits)
    try:
        img.load()  # a truncated file fails here (Pillow does not load truncated images by default)
        return img.convert("RGB")
    except PILImage.DecompressionBombError:
        raise ImageError("image is a decompression bomb (too many pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image is truncated or corrupt: {exc}") from None
    finally:
        img.close()


def check_request(sizes: list[int]) -> None:
    """The wire's bound on one request's images (count and total bytes)."""
    if len(sizes) > MAX_REQUEST_IMAGES:
        raise ImageError(f"{len(sizes)} images in one request; the most is {MAX_REQUEST_IMAGES}")
    if sum(sizes) > MAX_REQUEST_IMAGE_BYTES:
        raise ImageError(f"images of {sum(sizes)} bytes in one request; the most is {MAX_REQUEST_IMAGE_BYTES}")
