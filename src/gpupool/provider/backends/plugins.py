"""Backend plug-ins: a `Backend` subclass from outside gpupool, named in `--serve`.

Two ways to name one:

    --serve NAME=plugin:MODULE:CLASS[:SPEC]   # any module Python can import (PYTHONPATH)
    --serve NAME=KIND[:SPEC]                  # KIND installed in the entry-point group `gpupool.backends`

A package installs a KIND with, in its pyproject.toml::

    [project.entry-points."gpupool.backends"]
    mykind = "mypkg.backends:MyBackend"

The class is constructed as the built-in kinds are, `CLASS(NAME, SPEC)`, and must be a
concrete subclass of `gpupool.provider.backends.base.Backend`. Every way a plug-in can
be wrong (module not found, module failing to import, no such attribute, not a Backend)
is a ValueError whose message is one line, so the CLI reports it like any other bad
`--serve` value (exit status 2, no traceback).
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib.metadata import entry_points

from gpupool.provider.backends.base import Backend

PLUGIN = "plugin"  # the backend word that introduces MODULE:CLASS
ENTRY_POINT_GROUP = "gpupool.backends"
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def split_plugin_spec(spec: str) -> tuple[str, str]:
    """`MODULE:CLASS[:SPEC]` (what follows `plugin:`) -> (`MODULE:CLASS`, SPEC).

    Module and class names hold no colon, so the first two colons end them and SPEC
    keeps any of its own (URLs, nested backend specs).
    """
    module, _, rest = spec.partition(":")
    attr, _, inner = rest.partition(":")
    ref = f"{module}:{attr}"
    check_ref(ref, shown=f"{PLUGIN}:{spec}")
    return ref, inner


def check_ref(ref: str, shown: str = "") -> None:
    """Raise ValueError unless `ref` reads MODULE:CLASS (dotted Python names); `shown`: what
    the user wrote, for the message."""
    module, sep, attr = ref.partition(":")
    if not sep or not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(attr):
        raise ValueError(f"a backend plug-in is named {PLUGIN}:MODULE:CLASS[:SPEC] "
                         f"(e.g. {PLUGIN}:mypkg.backends:MyBackend); got {shown or ref!r}")


def installed_kinds() -> dict[str, str]:
    """Backend kinds other installed packages register: entry-point name -> MODULE:CLASS."""
    return {ep.name: f"{ep.module}:{ep.attr}" if ep.attr else ep.value
            for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin(ref: str) -> type[Backend]:
    """Import MODULE and return its CLASS, checked to be a concrete `Backend` subclass."""
    check_ref(ref)
    module_name, _, attr_path = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the named module (or a parent package) missing means "not found"; a
        # dependency the module itself lacks is an import failure of that module.
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ValueError(f"backend plug-in module {module_name!r} not found "
                             "(is its directory on PYTHONPATH?)") from None
        raise ValueError(f"backend plug-in module {module_name!r} failed to import: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the plug-in raises at import is reported in one line
        raise ValueError(f"backend plug-in module {module_name!r} failed to import: "
                         f"{type(exc).__name__}: {_one_line(exc)}") from None
    obj: object = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"backend plug-in module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise ValueError(f"backend plug-in {ref} is not a subclass of gpupool.provider.backends.base.Backend")
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise ValueError(f"backend plug-in {ref} is abstract: it does not implement {missing}")
    return obj


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


__all__ = ["ENTRY_POINT_GROUP", "PLUGIN", "check_ref", "installed_kinds", "load_plugin", "split_plugin_spec"]
