"""Model backends, chosen by name in `--serve NAME=BACKEND[:SPEC]`.

| backend      | serves                                | spec                                   |
| ------------ | ------------------------------------- | -------------------------------------- |
| `embeddings` | sentence-transformers embeddings      | model dir; empty/`minilm` = all-MiniLM-L6-v2 |
| `generate`   | transformers causal LM, streamed      | model dir; `tiny-llama` = demo model   |
| `ocr`        | text in images (chat), RapidOCR ONNX  | empty = bundled PP-OCRv4; or a DIR of det/cls/rec.onnx |
| `clip`       | image and text embeddings, one space  | CLIP model dir; `tiny-clip` = demo model |
| `upstream`   | a local OpenAI-compatible engine      | base URL `?model=&task=&key=`          |
| `echo`       | no model; network benchmarks only     | `chat` or `embeddings`, `?delay_ms=`   |

A backend from outside gpupool is a plug-in (`plugins.py`): `NAME=plugin:MODULE:CLASS[:SPEC]`,
or `NAME=KIND[:SPEC]` for a KIND installed in the `gpupool.backends` entry-point group.

Heavy imports (torch) happen only when an ML backend is constructed, so providers
that serve only `upstream` or `echo` do not need the `ml` extra.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.model_results import BackendError
from gpupool.provider.backends.base import Backend
from gpupool.provider.backends.plugins import PLUGIN, installed_kinds, load_plugin, split_plugin_spec

BACKEND_KINDS = ("embeddings", "generate", "ocr", "clip", "upstream", "echo")


@dataclass(frozen=True)
class ServeSpec:
    name: str
    backend: str  # a built-in kind, `plugin`, or an installed plug-in's KIND
    spec: str
    plugin: str = ""  # MODULE:CLASS of a plug-in backend; empty for the built-in kinds

    @classmethod
    def parse(cls, text: str) -> ServeSpec:
        """Parse `NAME=BACKEND[:SPEC]`, e.g. `minilm=embeddings` or `x=upstream:http://h/v1`,
        or `NAME=plugin:MODULE:CLASS[:SPEC]`. Checks the form only; make_backend imports a plug-in."""
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"--serve expects NAME=BACKEND[:SPEC], got {text!r}")
        backend, _, spec = rest.partition(":")
        if backend in BACKEND_KINDS:
            return cls(name=name, backend=backend, spec=spec)
        if backend == PLUGIN:
            ref, spec = split_plugin_spec(spec)
            return cls(name=name, backend=backend, spec=spec, plugin=ref)
        # Built-in kinds and `plugin` win over entry points of the same name.
        installed = {k: ref for k, ref in installed_kinds().items() if k not in (*BACKEND_KINDS, PLUGIN)}
        if backend in installed:
            return cls(name=name, backend=backend, spec=spec, plugin=installed[backend])
        choices = ", ".join([*BACKEND_KINDS, *sorted(installed)])
        raise ValueError(f"unknown backend {backend!r} in {text!r}; choose from {choices} "
                         f"(or {PLUGIN}:MODULE:CLASS[:SPEC])")


def make_backend(serve: ServeSpec) -> Backend:
    """Construct (not start) the backend `serve` names; ValueError for a bad spec or plug-in."""
    if serve.plugin:
        return load_plugin(serve.plugin)(serve.name, serve.spec)
    if serve.backend == "echo":
        from gpupool.provider.backends.echo import EchoBackend

        return EchoBackend(serve.name, serve.spec)
    if serve.backend == "upstream":
        from gpupool.provider.backends.upstream import UpstreamBackend

        return UpstreamBackend(serve.name, serve.spec)
    if serve.backend == "ocr":
        from gpupool.provider.backends.ocr import OCRBackend

        return OCRBackend(serve.name, serve.spec)
    if serve.backend == "clip":
        from gpupool.provider.backends.clip import CLIPBackend

        return CLIPBackend(serve.name, serve.spec)
    if serve.backend == "embeddings":
        from gpupool.provider.backends.embeddings import EmbeddingsBackend

        return EmbeddingsBackend(serve.name, serve.spec)
    from gpupool.provider.backends.generate import GenerateBackend

    return GenerateBackend(serve.name, serve.spec)


__all__ = ["Backend", "BackendError", "ServeSpec", "make_backend", "BACKEND_KINDS"]
