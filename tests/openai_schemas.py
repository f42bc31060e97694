"""Validate response bodies against OpenAI's published schemas (extracted in tests/data)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

DATA = Path(__file__).parent / "data" / "openai-schemas.json"


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` is not JSON Schema; translate it."""
    if isinstance(node, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") is True:
            return {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node


@cache
def _document() -> dict[str, Any]:
    return _openapi_to_jsonschema(json.loads(DATA.read_text()))


def validate(body: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError if `body` does not match components/schemas/<name>."""
    doc = _document()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    jsonschema.validate(body, schema)
