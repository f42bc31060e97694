"""Extract the OpenAI schemas our routes must match from the published OpenAPI file.

    python tests/data/extract_openai_schemas.py ../shared/specs/openai-openapi.yaml

Writes `openai-schemas.json` beside this script: the named schemas plus everything
they reference, so the tests run from a clone without the 3 MB spec (MIT licence:
see openai-openapi.LICENSE beside it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOTS = [
    "CreateEmbeddingResponse", "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse", "ListModelsResponse", "Model", "ErrorResponse",
    "OpenAIFile", "ListFilesResponse", "DeleteFileResponse", "Batch", "ListBatchesResponse",
]


def refs(node: object, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            out.add(ref.rsplit("/", 1)[1])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def main(spec_path: str) -> None:
    schemas = yaml.safe_load(Path(spec_path).read_text())["components"]["schemas"]
    keep: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        found: set[str] = set()
        refs(schemas[name], found)
        todo.extend(found - keep)
    out = {"components": {"schemas": {k: schemas[k] for k in sorted(keep)}}}
    Path(__file__).with_name("openai-schemas.json").write_text(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
