"""What one model call gives back (EmbedResult, TextDelta, GenDone) or raises (BackendError).

    async for event in backend.generate(payload):   # TextDelta..., then one GenDone
        ...

Plain types with no behaviour, kept below every room: provider backends produce them
(provider/backends/base.py defines the interface that returns them), and the
checker's judging (verify/judging.py) consumes a reference model's. Living here
rather than in provider/ lets verify read them without importing the provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EmbedResult:
    vectors: bytes  # little-endian float32, len(inputs) rows of `dimensions`
    dimensions: int
    prompt_tokens: int


@dataclass
class TextDelta:
    text: str


@dataclass
class GenDone:
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    # The chosen tokens and their log-probabilities (backends that run the model themselves):
    # committed in the receipt, so a checker can score them in one forward pass.
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class BackendError(Exception):
    """The backend could not serve a request (bad input for this model, engine down)."""

    def __init__(self, code: str, message: str, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.retryable = retryable
