"""Cut OpenAI's published OpenAPI file down to the four operations the gateway serves.

    .venv/bin/python tests/specs/extract_fuzz_spec.py ../shared/specs/openai-openapi.yaml

Writes `openai-fuzz-spec.json` beside this script: `POST /embeddings`,
`POST /chat/completions`, `POST /completions` and `GET /models`, with every
component schema they reference and the bearer-auth scheme, so the schema fuzz test
(tests/integration/test_fuzz_openai.py) runs from a clone without the 3 MB spec
(MIT licence: see tests/data/openai-openapi.LICENSE). Documentation-only fields
(`x-oaiMeta`, long descriptions) are dropped: they are most of the file's size and
schemathesis does not read them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OPERATIONS = {"/embeddings": "post", "/chat/completions": "post", "/completions": "post", "/models": "get"}
DROP_KEYS = {"x-oaiMeta", "x-oaiExpandable", "x-oaiTypeLabel", "examples", "example", "description", "summary",
             "title", "x-stainless-const", "deprecated"}


def strip(node: Any, in_properties: bool = False) -> Any:
    """Drop documentation keys, except where they are property names (a field called "description")."""
    if isinstance(node, dict):
        return {k: strip(v, k == "properties") for k, v in node.items() if in_properties or k not in DROP_KEYS}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node: Any, out: set[tuple[str, str]]) -> None:
    """Collect (section, name) for every `#/components/<section>/<name>` reference under `node`."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            _, _, section, name = ref.split("/", 3)
            out.add((section, name))
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def main(spec_path: str) -> None:
    spec = yaml.load(Path(spec_path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    paths = {p: {m: strip(spec["paths"][p][m])} for p, m in OPERATIONS.items()}
    components = spec["components"]
    keep: set[tuple[str, str]] = set()
    todo: set[tuple[str, str]] = set()
    refs(paths, todo)
    while todo:
        ref = todo.pop()
        if ref in keep:
            continue
        keep.add(ref)
        found: set[tuple[str, str]] = set()
        refs(components[ref[0]][ref[1]], found)
        todo |= found - keep
    kept: dict[str, dict[str, Any]] = {"securitySchemes": components["securitySchemes"]}
    for section, name in sorted(keep):
        kept.setdefault(section, {})[name] = strip(components[section][name])
    out = {
        "openapi": spec["openapi"],
        "info": {"title": spec["info"]["title"], "version": spec["info"]["version"],
                 "license": spec["info"].get("license", {})},
        "servers": spec["servers"],
        "security": spec["security"],
        "paths": paths,
        "components": kept,
    }
    Path(__file__).with_name("openai-fuzz-spec.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
