"""Cheating backends for the red-team suite and the verification benchmark.

Each mode misbehaves in one way that the checkers must catch; gpupool itself does
not know about them. They load into a normal provider as a backend plug-in
(`provider/backends/plugins.py`)::

    --serve NAME=plugin:tests.redteam:RedTeamBackend:MODE[:BASE_SPEC][?rate=R&seed=S&tps=T]

`REDTEAM` is that prefix; the processes a `Network` spawns can import this module
when it passes them `child_env()` (the repository root on PYTHONPATH).

BASE_SPEC is the honest backend the cheater wraps and claims to be: `minilm` (the
default) or `embeddings:DIR` for sentence embeddings, `tiny-llama` or `generate:DIR`
for generation, `ocr` (or `ocr:DIR`) for text in images, `tiny-clip` or `clip:DIR` for image
and text embeddings; a bare directory is taken as embeddings when it holds a
sentence-transformers `modules.json`, else as a causal LM. The offer is the base
backend's own, so the cheater announces exactly what an honest provider would.

| mode            | task        | misbehaviour                                                    |
| --------------- | ----------- | --------------------------------------------------------------- |
| `random-minilm` | embeddings  | a MiniLM-shaped model with random weights (seeded) under the claimed name |
| `random-llama`  | generate    | the base causal LM's shape and tokenizer with random weights (seeded) |
| `noise`         | both        | random unit vectors / random words                              |
| `cached`        | both        | the previous answer it gave, whatever the new prompt            |
| `truncate`      | generate    | cuts the text to half but reports the full usage                |
| `claims`        | both        | serves honestly but claims 10x..1000x speed in its offer (`tps=`) |
| `madeup`        | generate    | the honest answer's words swapped for random ones, honest-looking usage (OCR: made-up text) |
| `lowres`        | embeddings  | the honest vectors cut to one bit per dimension (sign), renormalised |

Against an `ocr` base, `truncate` is the OCR provider that returns half the text it read
(billing all of it) and `noise` the one that makes text up; against `tiny-clip`, `noise`
returns random vectors for images and texts alike.

`rate=R` (default 1) cheats on that fraction of requests, drawn from a `seed`ed RNG
(default 0), and answers honestly through the base backend otherwise; `cheats` and
`requests` count what it did, so tests can compare verdicts against the truth.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs

import msgspec

from gpupool.model_results import BackendError, EmbedResult, GenDone, TextDelta
from gpupool.protocol import EmbedPayload, GeneratePayload, ModelOffer
from gpupool.provider.backends.base import Backend, GenEvent
from gpupool.provider.backends.embeddings import EmbeddingsBackend
from gpupool.provider.backends.generate import GenerateBackend

MODES = ("random-minilm", "random-llama", "noise", "cached", "truncate", "claims", "madeup", "lowres")
DEFAULT_CLAIMED_TPS = 10_000.0
REDTEAM = "plugin:tests.redteam:RedTeamBackend"  # the backend part of a cheater's --serve value
ROOT = Path(__file__).resolve().parent.parent  # the repository root, where `tests` is a package


def child_env() -> dict[str, str]:
    """Environment for spawned gpupool processes (`Network(env=...)`) so a provider can load
    `REDTEAM`: the repository root joins PYTHONPATH, after what is already there."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join([*paths, str(ROOT)])}


def _base_kind(base: str) -> tuple[str, str]:
    """(backend kind, spec) of the honest backend named by BASE_SPEC."""
    kind, sep, rest = base.partition(":")
    if sep and kind in ("embeddings", "generate", "ocr", "clip"):
        return kind, rest
    if base in ("ocr", "tiny-clip"):
        return ("ocr", "") if base == "ocr" else ("clip", base)
    if base in ("", "minilm"):
        return "embeddings", base
    if base == "tiny-llama":
        return "generate", base
    if (Path(base).expanduser() / "modules.json").is_file():
        return "embeddings", base
    return "generate", base


class RandomMiniLMBackend(EmbeddingsBackend):
    """The base embedding model's architecture and tokenizer with seeded random weights.

    Loaded through the normal embeddings path, then the transformer's weights are
    replaced in place, so the offer still names the real model: exactly the lie of a
    provider serving an untrained or wrong model under a popular name.
    """

    def __init__(self, name: str, spec: str = "", seed: int = 0):
        super().__init__(name, spec)
        self.seed = seed

    def _load(self) -> None:
        super()._load()
        import torch
        from transformers import AutoModel

        auto = self._model[0].auto_model
        torch.manual_seed(self.seed)
        random_model = AutoModel.from_config(auto.config)
        # strict=False: the fresh model may lack buffers the checkpoint carries (position ids).
        auto.load_state_dict(random_model.state_dict(), strict=False)


class RandomLlamaBackend(GenerateBackend):
    """The base causal LM's architecture and tokenizer with seeded random weights.

    Each weight matrix is redrawn with the spread of the real one, so the impostor's
    next-token distributions are as peaked as the real model's, only over other tokens:
    a cheap model that looks plausible until its tokens are checked one by one.
    """

    def __init__(self, name: str, spec: str = "", seed: int = 0):
        super().__init__(name, spec)
        self.seed = seed

    def _load(self) -> None:
        super()._load()
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for _, param in sorted(self._model.named_parameters()):
                if param.ndim > 1:  # norm scales stay: they are ones in the tiny model anyway
                    noise = torch.randn(param.shape, generator=gen).to(param.device, param.dtype)
                    param.copy_(noise * param.float().std().to(param.dtype))


class RedTeamBackend(Backend):
    """Wraps an honest backend and cheats in one `mode` on a `rate` fraction of requests."""

    kind = "redteam"

    def __init__(self, name: str, spec: str = ""):
        super().__init__(name, spec)
        from gpupool.provider.backends import ServeSpec, make_backend

        main, _, query = spec.partition("?")
        self.mode, _, base = main.partition(":")
        if self.mode not in MODES:
            raise ValueError(f"redteam mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        self.rate = float(params.get("rate", "1"))
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"redteam rate must be in [0, 1], got {self.rate}")
        self.seed = int(params.get("seed", "0"))
        self.claimed_tps = float(params.get("tps", DEFAULT_CLAIMED_TPS))
        if not base and self.mode == "truncate":
            base = "tiny-llama"
        base_kind, base_spec = _base_kind(base)
        self.base: Backend = make_backend(ServeSpec(name, base_kind, base_spec))
        self.task = self.base.task
        if self.mode == "random-minilm" and self.task != "embeddings":
            raise ValueError("redteam random-minilm needs an embeddings base (e.g. minilm)")
        if self.mode == "lowres" and self.task != "embeddings":
            raise ValueError("redteam lowres needs an embeddings base (e.g. tiny-clip)")
        if self.mode in ("truncate", "random-llama", "madeup") and self.task != "generate":
            raise ValueError(f"redteam {self.mode} needs a generation base (e.g. tiny-llama)")
        self.impostor: Backend | None = (
            RandomMiniLMBackend(name, base_spec, self.seed) if self.mode == "random-minilm"
            else RandomLlamaBackend(name, base_spec, self.seed) if self.mode == "random-llama"
            else None
        )
        self._rng = random.Random(self.seed)
        self.requests = 0  # requests served
        self.cheats = 0  # requests answered dishonestly
        self._last_embed: EmbedResult | None = None
        self._last_gen: tuple[str, GenDone] | None = None

    async def start(self) -> None:
        await self.base.start()
        if self.impostor is not None:
            await self.impostor.start()

    async def close(self) -> None:
        await self.base.close()
        if self.impostor is not None:
            await self.impostor.close()

    def offer(self) -> ModelOffer:
        offer = self.base.offer()
        if self.mode != "claims":
            return offer
        # Speeds no single GPU reaches; routing must cap them until it has measured.
        gen = self.task == "generate"
        return msgspec.structs.replace(
            offer,
            claimed_decode_tps=self.claimed_tps if gen else 0.0,
            claimed_prefill_tps=self.claimed_tps * 20 if gen else 0.0,
            claimed_items_per_s=0.0 if gen else self.claimed_tps,
        )

    def _draw(self) -> bool:
        """Whether this request is cheated on (always False for `claims`: it lies in the offer only)."""
        self.requests += 1
        return self.mode != "claims" and self._rng.random() < self.rate

    # ------------------------------------------------------------ embeddings

    async def embed(self, payload: EmbedPayload, urgent: bool = True) -> EmbedResult:
        cheat = self._draw()
        result: EmbedResult | None = None
        if cheat and self.mode == "random-minilm" and self.impostor is not None:
            result = await self.impostor.embed(payload, urgent)
        elif cheat and self.mode == "noise":
            result = self._noise_vectors(payload)
        elif cheat and self.mode == "cached" and self._last_embed is not None:
            result = self._replay_vectors(self._last_embed, len(payload.inputs))
        elif cheat and self.mode == "lowres":
            result = self._one_bit(await self.base.embed(payload, urgent))
        if result is None:
            result = await self.base.embed(payload, urgent)
        else:
            self.cheats += 1
        self._last_embed = result
        return result

    def _noise_vectors(self, payload: EmbedPayload) -> EmbedResult:
        import numpy as np

        dims = self.base.offer().dimensions
        rng = np.random.default_rng(self._rng.getrandbits(64))
        rows = rng.standard_normal((len(payload.inputs), dims))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        # A plausible token count (words plus [CLS]/[SEP]), so only the vectors give it away.
        tokens = sum(len(t.split()) + 2 for t in payload.inputs)
        return EmbedResult(rows.astype("<f4").tobytes(), dims, tokens)

    @staticmethod
    def _one_bit(honest: EmbedResult) -> EmbedResult:
        import numpy as np

        rows = np.sign(np.frombuffer(honest.vectors, dtype="<f4")).reshape(-1, honest.dimensions)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        return EmbedResult(rows.astype("<f4").tobytes(), honest.dimensions, honest.prompt_tokens)

    @staticmethod
    def _replay_vectors(last: EmbedResult, n: int) -> EmbedResult:
        row = 4 * last.dimensions
        have = len(last.vectors) // row
        # As many rows as asked for, cycling through the old answer's rows.
        data = b"".join(last.vectors[(i % have) * row:(i % have + 1) * row] for i in range(n))
        return EmbedResult(data, last.dimensions, last.prompt_tokens)

    # ------------------------------------------------------------ generation

    async def generate(self, payload: GeneratePayload) -> AsyncIterator[GenEvent]:  # type: ignore[override]
        cheat = self._draw()
        if cheat and self.mode == "cached" and self._last_gen is not None:
            self.cheats += 1
            text, done = self._last_gen
        elif cheat and self.mode == "noise":
            self.cheats += 1
            text, done = self._noise_text(payload)
        elif cheat and self.mode == "random-llama" and self.impostor is not None:
            self.cheats += 1
            text, done = await self._collect(self.impostor, payload)
        else:
            text, done = await self._collect(self.base, payload)
            if cheat and self.mode == "truncate":
                self.cheats += 1
                # Half the text, but the usage (and so the bill) of all of it.
                text = text[: len(text) // 2]
            elif cheat and self.mode == "madeup":
                self.cheats += 1
                text = self._made_up(text, payload.response_format == "json_object")
        self._last_gen = (text, done)
        if text:
            yield TextDelta(text)
        yield done

    @staticmethod
    async def _collect(backend: Backend, payload: GeneratePayload) -> tuple[str, GenDone]:
        parts: list[str] = []
        async for event in backend.generate(payload):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                return "".join(parts), event
        raise BackendError("internal_error", "base backend ended without a result", retryable=True)

    def _made_up(self, text: str, json_form: bool) -> str:
        """As many words as the honest answer, drawn at random: the usage adds up, the text is invented."""
        import json

        from gpupool.provider.tiny_model import CORPUS

        words = CORPUS.split()

        def invent(line: str) -> str:
            return " ".join(self._rng.choice(words) for _ in line.split())

        if not json_form:
            return "\n".join(invent(line) for line in text.split("\n"))
        data = json.loads(text)
        for image in data["images"]:
            for line in image["lines"]:
                line["text"] = invent(line["text"])
        return json.dumps(data)

    def _noise_text(self, payload: GeneratePayload) -> tuple[str, GenDone]:
        from gpupool.provider.tiny_model import CORPUS

        words = CORPUS.split()
        text = " ".join(self._rng.choice(words) for _ in range(payload.max_tokens))
        prompt = payload.prompt + " ".join(m.content for m in payload.messages)
        return text, GenDone("length", len(prompt.split()), payload.max_tokens)
