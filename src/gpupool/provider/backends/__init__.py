"""Model backends, chosen by name in `--serve NAME=BACKEND[:SPEC]`.

| backend      | serves                                | spec                                   |
| ------------ | ------------------------------------- | -------------------------------------- |
| `embeddings` | sentence-transformers embeddings      | model dir; empty/`minilm` = all-MiniLM-L6-v2 |
| `generate`   | transformers causal LM, streamed      | model dir; `tiny-llama` = demo model   |
| `upstream`   | a local OpenAI-compatible engine      | base URL `?model=&task=&key=`          |
| `echo`       | no model; network benchmarks only     | `chat` or `embeddings`, `?delay_ms=`   |

(`redteam`, a backend that cheats on purpose, exists for the red-team tests; it is
accepted but never listed to users.)

Heavy imports (torch) happen only when an ML backend is constructed, so providers
that serve only `upstream` or `echo` do not need the `ml` extra.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.provider.backends.base import Backend, BackendError

# What users are told about; BACKEND_KINDS also accepts the test-only `redteam`.
PUBLIC_KINDS = ("embeddings", "generate", "upstream", "echo")
BACKEND_KINDS = (*PUBLIC_KINDS, "redteam")


@dataclass(frozen=True)
class ServeSpec:
    name: str
    backend: str
    spec: str

    @classmethod
    def parse(cls, text: str) -> ServeSpec:
        """Parse `NAME=BACKEND[:SPEC]`, e.g. `minilm=embeddings` or `x=upstream:http://h/v1`."""
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"--serve expects NAME=BACKEND[:SPEC], got {text!r}")
        backend, _, spec = rest.partition(":")
        if backend not in BACKEND_KINDS:
            raise ValueError(f"unknown backend {backend!r} in {text!r}; choose from {', '.join(PUBLIC_KINDS)}")
        return cls(name=name, backend=backend, spec=spec)


def make_backend(serve: ServeSpec) -> Backend:
    if serve.backend == "echo":
        from gpupool.provider.backends.echo import EchoBackend

        return EchoBackend(serve.name, serve.spec)
    if serve.backend == "upstream":
        from gpupool.provider.backends.upstream import UpstreamBackend

        return UpstreamBackend(serve.name, serve.spec)
    if serve.backend == "redteam":
        from gpupool.provider.backends.redteam import RedTeamBackend

        return RedTeamBackend(serve.name, serve.spec)
    if serve.backend == "embeddings":
        from gpupool.provider.backends.embeddings import EmbeddingsBackend

        return EmbeddingsBackend(serve.name, serve.spec)
    from gpupool.provider.backends.generate import GenerateBackend

    return GenerateBackend(serve.name, serve.spec)


__all__ = ["Backend", "BackendError", "ServeSpec", "make_backend", "BACKEND_KINDS", "PUBLIC_KINDS"]
