"""Text generation from a local Hugging Face causal LM, with our own decoding loop.

`GenerateBackend` loads any local causal-LM directory (or the built-in "tiny-llama"
demo model) and streams text for the provider agent. It runs its own token loop with a
KV cache rather than `model.generate`, because the provider needs things `generate`
makes awkward: a cancellation check on every token, stop strings that are cut *before*
they appear in the stream, UTF-8-safe incremental text, and seeded sampling that gives
the same text for the same request. Sampled tokens come from `gpupool.verify.token_sampler`
(not torch's sampler, which draws other numbers on a GPU than on a CPU), so a checker
on any hardware can replay them from the seed.

torch and transformers are imported lazily so gpupool imports without the ml extra.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from gpupool.model_results import BackendError, GenDone, TextDelta
from gpupool.protocol import GeneratePayload, ModelOffer
from gpupool.provider.backends.base import Backend, GenEvent, ModelThread
from gpupool.provider.tiny_model import create_tiny_llama, default_tiny_llama_path
from gpupool.verify import token_sampler
from gpupool.verify.token_sampler import GREEDY_BELOW

TINY_LLAMA_ALIAS = "tiny-llama"
DEFAULT_MAX_OUTPUT = 2048
REPLACEMENT_CHAR = "\ufffd"


def configure_torch_threads() -> None:
    """Limit torch's intra-op threads: several providers often share one small machine."""
    import torch

    try:
        threads = int(os.environ.get("GPUPOOL_TORCH_THREADS", "1"))
    except ValueError:
        threads = 1
    torch.set_num_threads(max(1, threads))


def _offline_env() -> None:
    # Must happen before huggingface_hub is first imported: it reads these once.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _held_stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string.

    That much text must be held back: the next token may complete the stop string.
    """
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held


class GenerateBackend(Backend):
    """Streams completions from a local causal LM; `spec` is its directory or "tiny-llama"."""

    task = "generate"
    kind = "generate"

    def __init__(self, name: str, spec: str = ""):
        super().__init__(name, spec)
        self._thread = ModelThread(name)
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: str = "cpu"
        self._path: Path | None = None
        self._max_positions = 2048
        self._eos_ids: set[int] = set()
        self._untrained = False
        self._logits_to_keep = False

    # ------------------------------------------------------------------ lifecycle

    def _resolve_path(self) -> Path:
        if self.spec in ("", TINY_LLAMA_ALIAS):
            return create_tiny_llama(default_tiny_llama_path())
        path = Path(self.spec).expanduser()
        if not (path / "config.json").is_file():
            raise BackendError("model_not_found", f"{path} is not a Hugging Face model directory")
        return path

    def _load(self) -> None:
        _offline_env()
        import inspect

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        configure_torch_threads()
        path = self._resolve_path()
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        # CPUs run half precision slowly; on a GPU keep the checkpoint's own dtype.
        dtype: Any = "auto" if self._device == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # transformers 5 renamed `torch_dtype` to `dtype`.
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        model.to(self._device).eval()

        config = model.config
        self._max_positions = int(
            getattr(config, "max_position_embeddings", 0)
            or getattr(tokenizer, "model_max_length", 0)
            or 2048
        )
        eos: set[int] = set()
        for source in (getattr(model, "generation_config", None), config, tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, list | tuple):
                eos.update(int(v) for v in value)
        readme = path / "README.md"
        self._untrained = readme.is_file() and "UNTRAINED" in readme.read_text(errors="replace")
        # Asking for only the last position's logits skips a vocab-sized matmul per
        # prompt token during prefill; not every architecture accepts the argument.
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._eos_ids = eos
        self._path = path
        self._tokenizer = tokenizer
        self._model = model

    async def start(self) -> None:
        if self.spec not in ("", TINY_LLAMA_ALIAS):
            self._resolve_path()  # a mistyped directory fails now, not after seconds of importing torch
        await self._thread.call(self._load)

    async def close(self) -> None:
        self._model = None
        self._tokenizer = None
        self._thread.shutdown()

    def offer(self) -> ModelOffer:
        if self._path is None:
            raise BackendError("engine_down", f"model {self.name!r} is not loaded", retryable=True)
        max_output = min(DEFAULT_MAX_OUTPUT, self._max_positions - 1)
        what = "untrained demo model (random weights)" if self._untrained else "causal LM"
        return ModelOffer(
            name=self.name,
            task="generate",
            backend="generate",
            description=f"{what} from {self._path.name}, {self._device}",
            max_input_tokens=self._max_positions - 1,
            max_output_tokens=max_output,
        )

    # ------------------------------------------------------------------ generation

    def _encode_prompt(self, payload: GeneratePayload) -> list[int]:
        tok = self._tokenizer
        if payload.messages:
            if not getattr(tok, "chat_template", None):
                raise BackendError("invalid_input", f"model {self.name!r} has no chat template")
            messages = [
                {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
                for m in payload.messages
            ]
            try:
                text = tok.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            except Exception as exc:  # noqa: BLE001 - templates raise for unsupported chats
                raise BackendError(
                    "invalid_input", f"chat template rejected messages: {exc}"
                ) from exc
            # The template already spells out bos and friends; don't add them twice.
            ids = tok(text + payload.continue_text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(payload.prompt + payload.continue_text)["input_ids"]
        if not ids:
            raise BackendError("invalid_input", "the prompt is empty")
        return list(ids)

    def _prepare(self, payload: GeneratePayload) -> list[int]:
        """Validate the request and tokenise its prompt; runs on the model thread."""
        if self._model is None:
            raise BackendError("engine_down", f"model {self.name!r} is not loaded", retryable=True)
        if payload.max_tokens < 1:
            raise BackendError("invalid_input", "max_tokens must be at least 1")
        prompt = self._encode_prompt(payload)
        limit = self._max_positions - payload.max_tokens
        if len(prompt) > limit:
            raise BackendError(
                "context_length_exceeded",
                f"prompt has {len(prompt)} tokens but model {self.name!r} allows "
                f"{max(limit, 0)} with max_tokens={payload.max_tokens} "
                f"(context {self._max_positions})",
            )
        return prompt

    async def generate(self, payload: GeneratePayload) -> AsyncIterator[GenEvent]:
        # Tokenising happens on the model thread too: a fast tokenizer used from two
        # threads at once can fail with "Already borrowed".
        prompt = await self._thread.call(self._prepare, payload)
        events = self._thread.iterate(lambda stop: self._decode_loop(payload, prompt, stop))
        try:
            async for event in events:
                yield event
        finally:
            # Closing the inner iterator sets its stop event, so the token loop ends now
            # rather than whenever the garbage collector finalises it.
            await events.aclose()

    def _decode_loop(
        self, payload: GeneratePayload, prompt: list[int], stop: threading.Event
    ) -> Iterator[GenEvent]:
        """Blocking token loop; runs on the model thread."""
        import torch

        model, tok = self._model, self._tokenizer
        greedy = payload.temperature < GREEDY_BELOW
        # The gateway always sends a seed for sampled requests (so checkers can replay
        # them); a provider used without one still samples, just not replayably.
        seed = payload.seed if payload.seed is not None else secrets.randbits(63)
        stops = [s for s in payload.stop if s]
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}

        generated: list[int] = []
        logprobs: list[float] = []
        sent = 0  # characters of the decoded text already emitted
        finish, eos_tokens = "length", 0
        past: Any = None
        inputs = torch.tensor([prompt], device=self._device)
        with torch.inference_mode():
            while len(generated) < payload.max_tokens:
                if stop.is_set():
                    return
                out = model(input_ids=inputs, past_key_values=past, use_cache=True, **extra)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                token = self._pick(logits, greedy, payload, seed, len(generated))
                logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
                if token in self._eos_ids:
                    # eos is never part of the text, but it was computed: bill it.
                    finish, eos_tokens = "stop", 1
                    break
                generated.append(token)
                inputs = torch.tensor([[token]], device=self._device)

                # Decode everything so far and emit only the new, settled suffix.
                text = tok.decode(generated, skip_special_tokens=True)
                # A trailing U+FFFD is a multi-byte character cut mid-way: wait for the rest.
                text = text.rstrip(REPLACEMENT_CHAR)
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    if cut > sent:
                        yield TextDelta(text[sent:cut])
                    yield GenDone("stop", len(prompt), len(generated), list(generated), logprobs[:len(generated)])
                    return
                ready = len(text) - _held_stop_prefix(text, stops)
                if ready > sent:
                    yield TextDelta(text[sent:ready])
                    sent = ready

        # Flush text held back for a stop string that never came. A character still
        # incomplete when generation ended is dropped rather than sent as U+FFFD.
        text = tok.decode(generated, skip_special_tokens=True).rstrip(REPLACEMENT_CHAR)
        if len(text) > sent:
            yield TextDelta(text[sent:])
        yield GenDone(finish, len(prompt), len(generated) + eos_tokens, list(generated), logprobs[:len(generated)])

    async def score(self, payload: GeneratePayload, token_ids: list[int]) -> Any:
        """Logits [len(token_ids), vocab] (numpy float32) the model gives each of these tokens
        after the request's prompt: one forward pass, what a checker needs to judge greedy
        output or to replay sampled output."""
        return await self._thread.call(self._score, payload, token_ids)

    def _score(self, payload: GeneratePayload, token_ids: list[int]) -> Any:
        import torch

        prompt = self._prepare(payload)
        ids = torch.tensor([prompt + token_ids[:-1]], device=self._device)
        with torch.inference_mode():
            logits = self._model(input_ids=ids).logits[0, len(prompt) - 1:].float()
        return logits.cpu().numpy()

    def end_token_ids(self) -> list[int]:
        """The token ids that end generation (end-of-sequence), for checking a reported stop."""
        return sorted(self._eos_ids)

    async def prompt_tokens(self, payload: GeneratePayload) -> int:
        """How many tokens the request's prompt is: what a provider must report as prompt usage."""
        return await self._thread.call(lambda: len(self._prepare(payload)))

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self._thread.call(
            lambda: self._tokenizer.decode(token_ids, skip_special_tokens=True).rstrip(REPLACEMENT_CHAR))

    @staticmethod
    def _pick(logits: Any, greedy: bool, payload: GeneratePayload, seed: int, step: int) -> int:
        import torch

        if greedy:
            return int(torch.argmax(logits))
        # float64 on the CPU: the sampler's arithmetic must be the same on every machine.
        return token_sampler.sample(logits.cpu().double().numpy(), payload.temperature, payload.top_p, seed, step)
