"""The house rules of `src/gpupool`, checked over its import graph (docs/design.md, "Rooms and layers").

- No import circle between modules.
- A module imports only its own room or rooms below it (`ROOMS`, lowest first); every
  exception is listed in `ALLOWED_UPWARD` with the reason docs/design.md gives.
- No module over 500 lines; `create_app` stays a wiring function.

Imports are read with `ast` from the source, all of them: top-level, inside functions
(lazy imports) and under `if TYPE_CHECKING:` alike, since each is a dependency a reader
has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "gpupool"

# Lowest first. A room is a module prefix; the longest matching prefix names a module's room.
ROOMS: list[tuple[str, ...]] = [
    # Foundation: one wire protocol, errors, identity, settings and small shared helpers.
    ("gpupool", "gpupool.errors", "gpupool.identity", "gpupool.protocol", "gpupool.config",
     "gpupool.urls", "gpupool.tls", "gpupool.logs", "gpupool.db", "gpupool.gc_tuning", "gpupool.metrics",
     "gpupool.cli_support"),
    # Pure policies: decisions from state, `now` and an RNG.
    ("gpupool.market",),
    ("gpupool.routing",),
    ("gpupool.verify",),
    ("gpupool.batch",),
    # Storage of money (SQL or EVM) behind one interface.
    ("gpupool.ledger",),
    # Roles.
    ("gpupool.provider",),
    ("gpupool.checker",),
    ("gpupool.gateway",),  # the gateway's shared base: store, probes, payload_size
    ("gpupool.gateway.edge",),
    ("gpupool.gateway.peers",),
    ("gpupool.gateway.dispatch",),
    ("gpupool.gateway.trust",),
    ("gpupool.gateway.money",),
    ("gpupool.gateway.fallback",),
    ("gpupool.gateway.batches",),
    ("gpupool.gateway.web",),
    ("gpupool.sdk",),
    ("gpupool.sim",),
    # Entry points: the command line and the local network.
    ("gpupool.__main__", "gpupool.cli", "gpupool.cli_views", "gpupool.cli_keys", "gpupool.cli_devnet", "gpupool.devnet", "gpupool.devnet_setup", "gpupool.demo",
     "gpupool.demo_images"),
]

# (importer, imported) pairs allowed to point up, each justified in docs/design.md.
ALLOWED_UPWARD: set[tuple[str, str]] = set()

MAX_LINES = 500


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The gpupool modules `name` imports (`from pkg import module` counts as the module itself)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    out.add(target)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def room_of(module: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(ROOMS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{module} is in no room: add it to ROOMS (and docs/design.md)"
    return rank


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_circle() -> None:
    assert cycles(graph()) == []


def test_the_circle_finder_finds_one() -> None:
    # The check above can fail: a two-module circle and a three-module one are both found.
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(cycles(edges)) == [["a", "b"], ["c", "d", "e"]]


def test_modules_import_only_their_room_or_rooms_below() -> None:
    upward = sorted((a, b) for a, targets in graph().items() for b in targets
                    if room_of(b) > room_of(a) and (a, b) not in ALLOWED_UPWARD)
    assert upward == [], "imports that point up a layer (docs/design.md, 'Rooms and layers'):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in upward)
    assert len(ALLOWED_UPWARD) <= 1


def test_no_module_is_over_500_lines() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_create_app_only_wires() -> None:
    tree = ast.parse((PACKAGE / "gateway" / "web" / "app.py").read_text())
    (create_app,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "create_app"]
    assert create_app.end_lineno is not None
    assert create_app.end_lineno - create_app.lineno + 1 <= 80


def test_test_only_backends_are_not_shipped() -> None:
    assert not list(PACKAGE.rglob("redteam*.py"))
