"""Images at the gateway's edge and in the market, without processes: the structural truncation
check for every accepted format (the edge decodes no pixels), per-image prices in costs and
holds, what `/v1/market` says a model accepts, and how `upstream` re-shapes images for an engine."""

from __future__ import annotations

import base64
import io
import json

import pytest

pytest.importorskip("PIL", reason="needs the ml extra")

from PIL import Image as PILImage  # noqa: E402

from gpupool import errors, images  # noqa: E402
from gpupool.gateway.edge import image_inputs, openai_api  # noqa: E402
from gpupool.market import pricing  # noqa: E402
from gpupool.market.summary import Listing, summarize  # noqa: E402
from gpupool.protocol import ChatMessage, EmbedPayload, Image, ModelOffer  # noqa: E402
from gpupool.provider.backends.upstream import data_url, embedding_input, openai_message  # noqa: E402


def encoded(kind: str, size: tuple[int, int] = (64, 48)) -> bytes:
    img = PILImage.new("RGB", size, (10, 120, 200))
    out = io.BytesIO()
    img.save(out, kind)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_complete_files_pass_and_truncated_ones_fail_without_decoding(kind: str) -> None:
    data, media_type = encoded(kind), f"image/{kind.lower()}"
    assert images.check_image(data, media_type) == (64, 48)
    for cut in (1, 10, len(data) // 2):
        with pytest.raises(images.ImageError, match="truncated or corrupt"):
            images.check_complete(data[:-cut], media_type)


def test_a_flipped_byte_in_a_png_fails_its_crc() -> None:
    data = bytearray(encoded("PNG"))
    data[45] ^= 0xFF  # inside the first chunk after IHDR
    with pytest.raises(images.ImageError, match="CRC"):
        images.check_complete(bytes(data), "image/png")


def test_parts_become_images_at_their_offsets_and_round_trip_to_openai_shapes() -> None:
    url = "data:image/png;base64," + base64.b64encode(encoded("PNG")).decode()
    body = openai_api.parse(openai_api.ChatCompletionRequest, chat_body(url))
    assert body.image_param() == "messages[1].content[1].image_url"
    payload = body.payload(16)
    message = payload.messages[1]
    assert message.content == "before after" and [i.at for i in message.images] == [7]
    parts = openai_message(message)["content"]
    assert parts == [{"type": "text", "text": "before "}, {"type": "image_url", "image_url": {"url": url}},
                     {"type": "text", "text": "after"}]
    assert openai_message(ChatMessage("user", "plain")) == {"role": "user", "content": "plain"}
    emb = EmbedPayload(inputs=["text", ""], images=[Image("image/png", b"\x89PNG", 1)])
    assert embedding_input(emb) == ["text", data_url(emb.images[0])]


def chat_body(url: str) -> bytes:
    return json.dumps({"model": "ocr", "messages": [
        {"role": "system", "content": "read"},
        {"role": "user", "content": [{"type": "text", "text": "before "}, {"type": "image_url", "image_url": {
            "url": url, "detail": "low"}}, {"type": "text", "text": "after"}]}]}).encode()


def test_images_only_in_user_messages_and_refusals_name_the_part() -> None:
    url = "data:image/png;base64,AAAA"
    with pytest.raises(errors.InvalidRequest) as err:
        image_inputs.chat_message(2, "assistant", [{"type": "image_url", "image_url": {"url": url}}], "",
                                  images.DEFAULT_LIMITS)
    assert err.value.param == "messages[2].content[0]"
    with pytest.raises(errors.InvalidRequest) as err:
        image_inputs.chat_message(0, "user", [{"type": "image_url", "image_url": {"url": url, "x": 1}}], "",
                                  images.DEFAULT_LIMITS)
    assert err.value.param == "messages[0].content[0]"
    with pytest.raises(errors.InvalidRequest) as err:
        image_inputs.refuse_unless_read("echo", [offer([])], "input[0]")
    assert "'echo'" in str(err.value) and err.value.param == "input[0]"
    image_inputs.refuse_unless_read("clip", [offer([]), offer(["text", "image"])], "input[0]")
    image_inputs.refuse_unless_read("unknown", [], "input[0]")  # no offer known: its 404 comes later


def offer(accepts: list[str]) -> ModelOffer:
    return ModelOffer("m", "embeddings", "clip", accepts=accepts)


def test_images_are_priced_held_and_parsed() -> None:
    price = pricing.Price(per_m_in=1_000, per_m_out=0, per_image=2_000)
    assert pricing.cost(price, 100, 0, images=3) == 1 + 6_000
    assert pricing.cost(price, 100, 0) == 1
    bound = pricing.hold_bound([price], 100, 0, None, images=3)
    assert bound >= pricing.cost(price, 100 + 3 * 577, 0, images=3)  # CLIP ViT-L/14@336 counts 577 per image
    assert pricing.image_share(price, 3, 5_000) == 5_000 and pricing.image_share(price, 3, 9_000) == 6_000
    assert pricing.parse_price("1000/0/2000", images=True) == price
    with pytest.raises(ValueError, match="IN or IN/OUT"):
        pricing.parse_price("1000/0/2000")  # fallback lanes have no image price
    assert not pricing.Price(per_image=1).free


def test_market_says_what_a_model_accepts() -> None:
    def listing(provider: str, accepts: tuple[str, ...], price_image: int = 0) -> Listing:
        return Listing("m", "embeddings", provider, "eu", 10, 0, 4, 0, False, None, accepts, price_image)

    row = summarize([listing("a", ("text", "image"), 500), listing("b", ("text",))])[0]
    assert row["accepts"] == ["text", "image"] and row["price_image"] == {"min": 500, "max": 500}
    row = summarize([listing("b", ())])[0]
    assert row["accepts"] == ["text"] and row["price_image"] is None


def test_base64_in_chunks_decodes_as_one_call_would() -> None:
    """Big data URLs are decoded a chunk at a time (the event loop runs between chunks): the same
    bytes, and the same refusals, as one strict call."""
    import os

    for n in (0, 1, 2, 3, images.B64_CHUNK // 4 * 3, images.B64_CHUNK + 5, 3 * images.B64_CHUNK + 1):
        data = os.urandom(n)
        assert images._b64decode(base64.b64encode(data).decode()) == data
    good = base64.b64encode(os.urandom(images.B64_CHUNK)).decode()
    for bad in (good[:-1], good[:images.B64_CHUNK - 2] + "==" + good[images.B64_CHUNK:], good[:100] + "@" + good[101:]):
        with pytest.raises(ValueError):
            base64.b64decode(bad, validate=True)
        with pytest.raises(ValueError):
            images._b64decode(bad)
