"""Red team for images: OCR and image-embedding cheaters as real providers beside honest ones.

A real gateway, an honest provider of `ocr` and `tiny-clip`, two cheaters
(`tests/redteam.py`: OCR that makes its text up with an honest word count and usage;
image embeddings cut to one bit per dimension, cosine about 0.8 to the truth: the
subtler of each kind; the others, half the text billed in full and random vectors, are
judged in tests/unit/test_checker_images.py) and a checker holding both reference models.
Clients send images with the official `openai` client; the test reads what the gateway
decided: every cheater suspended, the honest provider not, and suspended providers get no
more traffic. A second test: OCR readings become canaries that catch a liar with no checker.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import time
from typing import Any

import openai
import pytest

pytest.importorskip("rapidocr_onnxruntime", reason="needs the ml extra")

from gpupool.devnet import Network  # noqa: E402
from gpupool.devnet_setup import prepare_models  # noqa: E402
from tests.integration.conftest import client_for, wait_checkers  # noqa: E402
from tests.integration.test_billing import FAST_SETTLE  # noqa: E402
from tests.integration.test_images_pool import tiny_png  # noqa: E402
from tests.redteam import REDTEAM  # noqa: E402
from tests.unit.test_image_backends import render  # noqa: E402

pytestmark = pytest.mark.ml

CHEATERS = {
    "ocr made-up text": ("ocr", f"ocr={REDTEAM}:madeup:ocr"),
    "clip low-resolution vectors": ("tiny-clip", f"tiny-clip={REDTEAM}:lowres:clip:tiny-clip"),
}
WORDS = ["Oat", "Milk", "Bread", "Rye", "Salt", "Tea", "Honey", "Jam", "Rice", "Soap", "Lamp", "Kettle"]


def label_url(i: int) -> str:
    """A small rendered label of two lines (fast to read), different for every i."""
    lines = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5 + 1) % len(WORDS)]} {i}", f"Lot {1000 + i * 7}"]
    return "data:image/png;base64," + base64.b64encode(render(lines, "DejaVuSans.ttf", size=20)).decode()


def ask(client: openai.OpenAI, model: str, i: int, region: str = "") -> None:
    headers = {"x-gpupool-region": region, "x-gpupool-region-policy": "require"} if region else {}
    try:
        if model == "ocr":
            client.chat.completions.create(model="ocr", extra_headers=headers, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": label_url(i)}}]}])
        else:
            client.embeddings.create(model="tiny-clip", extra_headers=headers, input=[
                f"picture {i}", "data:image/png;base64," + base64.b64encode(tiny_png(i)).decode()])
    except openai.APIStatusError as e:  # a cheater suspended mid-round leaves its region empty: 503
        assert e.status_code == 503, e


@pytest.mark.timeout(420)  # start-up (four model processes) + up to 180 s of rounds
def test_ocr_and_image_embedding_cheaters_are_suspended_honest_provider_is_not(network: Network) -> None:
    prepare_models()
    network.start_gateway(extra=FAST_SETTLE)
    honest = network.start_provider(["ocr=ocr", "tiny-clip=clip:tiny-clip"], region="honest")
    cheaters = {name: network.start_provider([serve], region=f"rt-{n}")
                for n, (name, (_model, serve)) in enumerate(CHEATERS.items())}
    network.start_checker(["ocr=ocr", "tiny-clip=clip:tiny-clip"])
    network.wait_for_models({"ocr": 2, "tiny-clip": 2}, timeout=240)
    wait_checkers(network, 1)
    started = time.monotonic()
    client = client_for(network, timeout=120)
    node = {name: p.node_id for name, p in cheaters.items()}
    rows: dict[str, Any] = {}
    deadline, round_ = time.monotonic() + 180, 0
    while time.monotonic() < deadline:  # rounds until a deadline: a slow machine just needs more of them
        round_ += 1
        calls = []
        for n, (name, (model, _serve)) in enumerate(CHEATERS.items()):
            if not rows.get(node[name], {}).get("suspended"):
                calls += [lambda m=model, i=round_ * 10 + k, r=f"rt-{n}": ask(client, m, i, r) for k in range(2)]
        calls += [lambda m=m, i=round_ * 10 + 5: ask(client, m, i, "honest") for m in ("ocr", "tiny-clip")]
        with cf.ThreadPoolExecutor(4) as pool:
            for f in [pool.submit(c) for c in calls]:
                f.result()
        time.sleep(0.5)
        rows = {r["node_id"]: r for r in network.admin("/admin/audits")}
        if all(rows.get(n, {}).get("suspended") for n in node.values()):
            break
    assert all(rows.get(n, {}).get("suspended") for n in node.values()), {k: rows.get(n) for k, n in node.items()}
    print(f"cheaters suspended after {round_} rounds, {time.monotonic() - started:.1f} s")
    assert not rows[honest.node_id]["suspended"] and rows[honest.node_id]["audit_failures"] == 0
    assert rows[honest.node_id]["audits"] > 0
    # Suspended providers get no more traffic: images now all go to the honest one.
    after = [client.chat.completions.with_raw_response.create(model="ocr", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": label_url(900 + i)}}]}]) for i in range(3)]
    after += [client.embeddings.with_raw_response.create(model="tiny-clip", input=[
        "data:image/png;base64," + base64.b64encode(tiny_png(900 + i)).decode()]) for i in range(3)]
    assert {r.headers["x-gpupool-provider"] for r in after} == {honest.node_id}


async def test_image_readings_become_canaries_that_catch_a_liar_without_a_checker(network: Network) -> None:
    """OCR answers a checker passed (sent at the client's default temperature: the ocr model
    ignores it) become canaries; a provider that then joins and reads them wrongly is
    suspended by canaries alone, judged by edit distance like an audit."""
    import asyncio

    from gpupool import protocol
    from gpupool.identity import Identity
    from gpupool.protocol import ModelOffer
    from tests.integration.raw_peers import judging_checker, lie_until_suspended
    from tests.integration.test_bad_peers import handshake

    network.start_gateway(extra=[*FAST_SETTLE, "--canary-interval-s", "0.2"])
    network.start_provider(["ocr=ocr"])
    network.wait_for_models({"ocr": 1}, timeout=240)
    _checker, ws, jobs, judging = await judging_checker(network, ["ocr"], True)  # passes what the honest one read
    client = client_for(network, timeout=120)
    for i in range(3):
        await asyncio.to_thread(ask, client, "ocr", i)
    while len(jobs) < 3:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the last verdict reaches the gateway
    judging.cancel()
    await ws.close()  # from here on, no checker at all
    liar = Identity.generate()
    lws = await handshake(network, liar, [ModelOffer("ocr", "generate", "ocr", accepts=["text", "image"])])
    detail, runs = await lie_until_suspended(network, lws, liar, "Totally different words\nLot 1",
                                             protocol.Usage(1, 4), 30)
    assert "(canary)" in detail and runs and all(r.startswith("chatcmpl-") for r in runs), detail
    await lws.close()
