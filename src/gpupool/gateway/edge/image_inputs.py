"""Images in OpenAI's request shapes, turned into `protocol.Image`s and checked at the edge.

- chat: a `messages[i].content` part `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`
  becomes an `Image` of that message, placed at the character offset of the text before it;
- embeddings: an `input` item that is an image data URL (`data:image/...;base64,`) becomes an
  `Image` at its index (the text input there is ""); text items stay text, in the same space.

    param = chat_image_param(body.messages)   # the first image's parameter name, "" if none (cheap)
    refuse_unless_read(model, offers, param)  # 400 unless a provider of the model reads images
    payload = await asyncio.to_thread(body.payload, ...)   # images decoded from base64 and checked

Each image is checked once, here, off the event loop, decoding no pixels
(`images.check_image`): the type (PNG, JPEG, WebP, and the bytes must be what the URL
claims), the operator's byte and pixel limits (a decompression bomb is refused from its
header), and a truncated file from its structure. Only the provider that runs the model
decodes the pixels. `http(s)://` URLs are refused: this gateway never fetches a URL a
client names (no server-side request forgery); the client sends the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpupool import errors
from gpupool.images import ImageError, ImageLimits, check_image, check_request, parse_data_url
from gpupool.protocol import ChatMessage, Image, ModelOffer

IMAGE_URL_PREFIX = "data:image/"
DETAILS = (None, "auto", "low", "high")  # a resolution hint: backends read the image as sent


def limits_of(max_bytes: int, max_pixels: int) -> ImageLimits:
    """The operator's limits (GatewaySettings.image_max_bytes, image_max_pixels)."""
    return ImageLimits(max_bytes=max_bytes, max_pixels=max_pixels)


def reads_images(offer: ModelOffer) -> bool:
    return "image" in offer.accepts


def refuse_unless_read(model: str, offers: Sequence[ModelOffer], param: str) -> None:
    """A 400 naming the model and the parameter when the model's offers (its live providers', or
    the last one known) all read text only; with no offer known, the request goes on to its 404/503."""
    if offers and not any(reads_images(o) for o in offers):
        raise errors.InvalidRequest(f"{param}: model {model!r} does not accept images (it reads text only)",
                                    param=param, code="image_input_not_supported")


# ---------------------------------------------------------------- chat


def chat_image_param(contents: Sequence[str | list[dict[str, Any]] | None]) -> str:
    """The parameter name of the first image part among the messages' contents, "" if none."""
    for i, content in enumerate(contents):
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.get("type") == "image_url":
                    return f"messages[{i}].content[{j}].image_url"
    return ""


def chat_message(i: int, role: str, content: str | list[dict[str, Any]] | None, name: str,
                 limits: ImageLimits) -> ChatMessage:
    """One message: its text parts joined, its image parts decoded and checked (run off the loop
    when there are images: `chat_image_param` says)."""
    if content is None or isinstance(content, str):
        return ChatMessage(role=role, content=content or "", name=name)
    text: list[str] = []
    at, images = 0, []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text", ""), str):
                raise errors.InvalidRequest(f"{param}: a text part is {{\"type\": \"text\", \"text\": \"...\"}}",
                                            param=param)
            text.append(part.get("text", ""))
            at += len(text[-1])
        elif kind == "image_url":
            if role != "user":
                raise errors.InvalidRequest(f"{param}: image parts are only allowed in messages with role 'user'",
                                            param=param)
            images.append(_image_part(part, param, at, limits))
        else:
            raise errors.InvalidRequest(f"{param}: content parts of type {str(kind)[:40]!r} are not supported; "
                                        "send text or image_url", param="messages")
    return ChatMessage(role=role, content="".join(text), name=name, images=images)


def _image_part(part: dict[str, Any], param: str, at: int, limits: ImageLimits) -> Image:
    spec = part.get("image_url")
    extra = set(part) - {"type", "image_url"}
    if not isinstance(spec, dict) or not isinstance(spec.get("url"), str) or set(spec) - {"url", "detail"} or extra:
        raise errors.InvalidRequest(f"{param}: an image part is {{\"type\": \"image_url\", \"image_url\": "
                                    "{\"url\": \"data:image/png;base64,...\"}}", param=param)
    if spec.get("detail") not in DETAILS:
        raise errors.InvalidRequest(f"{param}.image_url.detail must be auto, low or high", param=param + ".image_url.detail")
    return decode(spec["url"], param + ".image_url.url", at, limits)


# ---------------------------------------------------------------- embeddings


def embedding_image_param(inputs: Sequence[object]) -> str:
    """The parameter name of the first input that is an image data URL, "" if none."""
    for i, item in enumerate(inputs):
        if isinstance(item, str) and item.startswith(IMAGE_URL_PREFIX):
            return f"input[{i}]"
    return ""


def embedding_inputs(inputs: list[str], limits: ImageLimits) -> tuple[list[str], list[Image]]:
    """The texts (an image's slot is "") and the images, each at its input's index."""
    texts, images = [], []
    for i, item in enumerate(inputs):
        if item.startswith(IMAGE_URL_PREFIX):
            images.append(decode(item, f"input[{i}]", i, limits))
            texts.append("")
        else:
            texts.append(item)
    check_total(images, "input")
    return texts, images


# ---------------------------------------------------------------- one image


def decode(url: str, param: str, at: int, limits: ImageLimits) -> Image:
    """The checked `Image` of a data URL; a one-line 400 naming `param` for anything refused."""
    if url.startswith(("http://", "https://")):
        raise errors.InvalidRequest(f"{param}: this gateway does not fetch image URLs; send the image itself as "
                                    "a data URL (data:image/png;base64,...)", param=param,
                                    code="image_url_not_allowed")
    try:
        media_type, data = parse_data_url(url, limits)
        check_image(data, media_type, limits)
    except ImageError as exc:
        why = " ".join(str(exc).split())  # one line, whatever the decoder said
        raise errors.InvalidRequest(f"{param}: {why}", param=param, code="invalid_image") from None
    return Image(media_type=media_type, data=data, at=at)


def check_total(images: list[Image], param: str) -> None:
    """The wire's bound on one request's images together (count and bytes)."""
    if images:
        try:
            check_request([len(image.data) for image in images])
        except ImageError as exc:
            raise errors.InvalidRequest(f"{param}: {exc}", param=param, code="invalid_image") from None
