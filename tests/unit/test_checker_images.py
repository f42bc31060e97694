"""The checker's judging of image answers against honest and red-team backends, in process.

OCR: the bundled PP-OCRv4 reads rendered labels; the reference and the honest provider are
separate `ocr` backend instances. Embeddings: the tiny random CLIP, two instances. The
cheaters are `tests/redteam.py` modes over those bases: OCR that makes text up or returns
half of it, embeddings that are random or cut to one bit per dimension.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("rapidocr_onnxruntime", reason="needs the ml extra")

from gpupool.protocol import (  # noqa: E402
    AuditJob,
    ChatMessage,
    Done,
    EmbedPayload,
    GeneratePayload,
    Image,
    Payload,
    Usage,
)
from gpupool.provider.backends import Backend  # noqa: E402
from gpupool.provider.tiny_clip import create_tiny_clip  # noqa: E402
from gpupool.verify.judging import judge  # noqa: E402
from tests.redteam import REDTEAM, RedTeamBackend  # noqa: E402
from tests.unit.test_checker_redteam import serve, started  # noqa: E402
from tests.unit.test_image_backends import LABELS, picture, render  # noqa: E402

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def backends(clip_dir: Path) -> Iterator[dict[str, Backend]]:
    specs = {"ref-ocr": "ocr=ocr", "honest-ocr": "ocr=ocr",
             "ref-clip": f"tiny-clip=clip:{clip_dir}", "honest-clip": f"tiny-clip=clip:{clip_dir}"}
    made = {role: asyncio.run(started(spec)) for role, spec in specs.items()}
    yield made
    for backend in made.values():
        asyncio.run(backend.close())


def label_request(response_format: str = "", labels: int = 1) -> GeneratePayload:
    return GeneratePayload(messages=[ChatMessage("user", "Read the label", images=[
        Image("image/png", render(lines, "DejaVuSans.ttf")) for lines in LABELS[:labels]])],
        response_format=response_format)


def image_search() -> EmbedPayload:
    return EmbedPayload(["red apple", "", "", "bread"], images=[
        Image("image/png", picture((200, 30, 30)), 1), Image("image/png", picture((30, 200, 90), (70, 30)), 2)])


async def cheat(spec: str, model: str, payload: Payload) -> tuple[RedTeamBackend, object]:
    cheater = await started(f"{model}={REDTEAM}:{spec}")
    assert isinstance(cheater, RedTeamBackend)
    assert cheater.offer().accepts == ["text", "image"]  # it claims what the honest model does
    try:
        return cheater, await serve(cheater, model, payload)
    finally:
        await cheater.close()


# ------------------------------------------------------------------ ocr


@pytest.mark.parametrize("form", ["", "json_object"])
async def test_honest_ocr_passes(backends: dict[str, Backend], form: str) -> None:
    job = await serve(backends["honest-ocr"], "ocr", label_request(form, labels=2))
    verdict = await judge(backends["ref-ocr"], job)
    assert verdict.passed and verdict.score == 1.0, verdict


@pytest.mark.parametrize("mode", ["madeup", "noise", "truncate"])
async def test_ocr_cheaters_fail_hard(backends: dict[str, Backend], mode: str) -> None:
    """Made-up text (same word count, honest-looking usage), random words, and half the text
    billed in full: each is a hard failure."""
    cheater, job = await cheat(f"{mode}:ocr", "ocr", label_request())
    assert cheater.cheats == 1
    verdict = await judge(backends["ref-ocr"], job)
    assert not verdict.passed and verdict.hard, verdict
    assert verdict.reason.startswith(("ocr_mismatch", "usage_inflated")), verdict


async def test_ocr_cheaters_in_json_form(backends: dict[str, Backend]) -> None:
    _, job = await cheat("madeup:ocr", "ocr", label_request("json_object"))
    verdict = await judge(backends["ref-ocr"], job)
    assert not verdict.passed and verdict.hard and verdict.reason.startswith("ocr_mismatch"), verdict
    _, job = await cheat("noise:ocr", "ocr", label_request("json_object"))  # random words: not JSON
    verdict = await judge(backends["ref-ocr"], job)
    assert not verdict.passed and verdict.hard, verdict


async def test_truncated_ocr_with_honest_usage_fails(backends: dict[str, Backend]) -> None:
    """Half the lines, billed for what was delivered: the usage adds up, the reading does not."""
    job = await serve(backends["honest-ocr"], "ocr", label_request())
    lines = job.text.split("\n")
    half = "\n".join(lines[: len(lines) // 2])
    from gpupool import protocol

    receipt = msgspec.structs.replace(job.receipt, output_hash=protocol.output_hash(half.encode()),
                                      usage=Usage(1, len(half.split())))
    verdict = await judge(backends["ref-ocr"], msgspec.structs.replace(job, text=half, receipt=receipt))
    assert not verdict.passed and verdict.reason.startswith("ocr_mismatch"), verdict
    # One misread character in the whole answer stays within the honest tolerance.
    typo = job.text.replace("Organic", "0rganic")
    receipt = msgspec.structs.replace(job.receipt, output_hash=protocol.output_hash(typo.encode()))
    assert (await judge(backends["ref-ocr"], msgspec.structs.replace(job, text=typo, receipt=receipt))).passed


# ------------------------------------------------------------------ clip


async def test_honest_image_embeddings_pass(backends: dict[str, Backend]) -> None:
    job = await serve(backends["honest-clip"], "tiny-clip", image_search())
    verdict = await judge(backends["ref-clip"], job)
    assert verdict.passed and verdict.score > 0.999, verdict


@pytest.mark.parametrize("mode", ["noise", "lowres", "cached"])
async def test_embedding_cheaters_fail(backends: dict[str, Backend], clip_dir: Path, mode: str) -> None:
    cheater = await started(f"tiny-clip={REDTEAM}:{mode}:clip:{clip_dir}")
    try:
        # `cached` answers this one honestly (nothing cached yet), and the next with its vectors.
        await serve(cheater, "tiny-clip", EmbedPayload(["x", ""], images=[Image("image/png", picture((1, 90, 200)), 1)]))
        job = await serve(cheater, "tiny-clip", image_search())
    finally:
        await cheater.close()
    verdict = await judge(backends["ref-clip"], job)
    assert not verdict.passed and verdict.reason == "embedding_mismatch", verdict
    assert verdict.hard, verdict  # random, one-bit and another input's vectors are all far off


def test_image_redteam_specs() -> None:
    assert RedTeamBackend("m", "lowres:clip:/nowhere").task == "embeddings"
    assert RedTeamBackend("m", "madeup:ocr").task == "generate"
    for bad in ("lowres:ocr", "madeup:clip:/nowhere"):
        with pytest.raises(ValueError):
            RedTeamBackend("m", bad)


# ------------------------------------------------------------------ canaries


def as_done(job: AuditJob) -> Done:
    """The Done frame a canary's provider would have sent with this audit job's answer."""
    return Done(job.receipt.request_id, job.receipt, vectors=job.vectors, dimensions=job.dimensions,
                text=job.text)


@pytest.mark.parametrize("form", ["", "json_object"])
async def test_ocr_canary_passes_an_honest_reading_and_fails_cheaters(backends: dict[str, Backend],
                                                                      form: str) -> None:
    """A canary (a passed answer sent again to another provider) is judged with the audits'
    tolerance: another honest instance's reading passes, made-up and half-cut text fail hard."""
    from gpupool.verify.canary_checks import judge_canary

    payload = label_request(form, labels=2)
    known = await serve(backends["ref-ocr"], "ocr", payload)
    again = await serve(backends["honest-ocr"], "ocr", payload)
    verdict = judge_canary(payload, known.text, b"", 0, as_done(again), again.text, reads_images=True)
    assert verdict.passed and verdict.score == 1.0, verdict
    for mode in ("madeup", "truncate"):
        _, job = await cheat(f"{mode}:ocr", "ocr", payload)
        verdict = judge_canary(payload, known.text, b"", 0, as_done(job), job.text, reads_images=True)
        assert not verdict.passed and verdict.hard, (mode, verdict)
    # Compared character for character (a text model's canary), one honest misread would fail.
    typo = again.text.replace("Organic", "0rganic")
    assert judge_canary(payload, known.text, b"", 0, as_done(again), typo, reads_images=True).passed
    assert not judge_canary(payload, known.text, b"", 0, as_done(again), typo, reads_images=False).passed


async def test_image_embedding_canary_passes_honest_and_fails_cheaters(backends: dict[str, Backend],
                                                                       clip_dir: Path) -> None:
    from gpupool.verify.canary_checks import judge_canary

    payload = image_search()
    known = await serve(backends["ref-clip"], "tiny-clip", payload)
    again = await serve(backends["honest-clip"], "tiny-clip", payload)
    verdict = judge_canary(payload, "", known.vectors, known.dimensions, as_done(again), "", False)
    assert verdict.passed and verdict.score > 0.999, verdict
    for mode in ("noise", "lowres"):
        cheater = await started(f"tiny-clip={REDTEAM}:{mode}:clip:{clip_dir}")
        try:
            job = await serve(cheater, "tiny-clip", payload)
        finally:
            await cheater.close()
        verdict = judge_canary(payload, "", known.vectors, known.dimensions, as_done(job), "", False)
        assert not verdict.passed and verdict.hard and verdict.reason == "embedding_mismatch", (mode, verdict)
