"""Backend plug-ins: `--serve NAME=plugin:MODULE:CLASS[:SPEC]` and the `gpupool.backends` entry points.

The plug-ins here are classes of this module (importable as `tests.unit.test_backend_plugins`)
and throwaway modules written under tmp_path; every bad one must fail with a one-line
ValueError, which the CLI turns into exit status 2 without a traceback.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from gpupool.provider.backends import ServeSpec, make_backend, plugins
from gpupool.provider.backends.echo import EchoBackend

HERE = "tests.unit.test_backend_plugins"


class Shout(EchoBackend):
    """A concrete Backend from outside gpupool (the echo backend under another kind)."""

    kind = "shout"


class NotABackend:
    def __init__(self, name: str, spec: str = ""):
        self.name, self.spec = name, spec


def test_plugin_spec_is_split_after_module_and_class() -> None:
    spec = ServeSpec.parse(f"m=plugin:{HERE}:Shout:chat?delay_ms=1")
    assert spec == ServeSpec("m", "plugin", "chat?delay_ms=1", plugin=f"{HERE}:Shout")
    # SPEC keeps its own colons (URLs, nested backend specs); no SPEC is an empty one.
    assert ServeSpec.parse("m=plugin:a.b:C:http://h:1/v1?x=1").spec == "http://h:1/v1?x=1"
    assert ServeSpec.parse("m=plugin:a.b:C.Inner") == ServeSpec("m", "plugin", "", plugin="a.b:C.Inner")
    for bad in ("m=plugin", "m=plugin:mod", "m=plugin:mod:", "m=plugin::C", "m=plugin:1mod:C",
                "m=plugin:mod:C-x", "m=plugin:/tmp/x.py:C"):
        with pytest.raises(ValueError, match="plugin:MODULE:CLASS") as err:
            ServeSpec.parse(bad)
        assert "\n" not in str(err.value)


def test_a_plugin_is_constructed_as_the_built_in_kinds_are() -> None:
    backend = make_backend(ServeSpec.parse(f"loud=plugin:{HERE}:Shout:embeddings"))
    assert isinstance(backend, Shout) and backend.kind == "shout"
    assert (backend.name, backend.spec, backend.task) == ("loud", "embeddings", "embeddings")
    # The plug-in's own checks of its SPEC surface as they do for built-in kinds.
    with pytest.raises(ValueError, match="echo spec"):
        make_backend(ServeSpec.parse(f"loud=plugin:{HERE}:Shout:teleport"))


def _error(text: str) -> str:
    with pytest.raises(ValueError) as err:
        make_backend(ServeSpec.parse(text))
    message = str(err.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_bad_plugins_fail_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "'no_such_pkg.backends' not found" in _error("m=plugin:no_such_pkg.backends:Mine")
    assert "'tests.no_such_module' not found" in _error("m=plugin:tests.no_such_module:Mine")
    assert f"{HERE!r} has no attribute 'Missing'" in _error(f"m=plugin:{HERE}:Missing")
    assert "not a subclass of gpupool.provider.backends.base.Backend" in _error(f"m=plugin:{HERE}:NotABackend")
    assert "not a subclass" in _error(f"m=plugin:{HERE}:HERE")  # a string, not a class
    assert "is abstract: it does not implement offer" in _error("m=plugin:gpupool.provider.backends.base:Backend")
    # A module that exists but cannot be imported says so, with the reason (not "not found").
    (tmp_path / "plugin_needs_dep.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "plugin_broken.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = _error("m=plugin:plugin_needs_dep:Mine")
    assert "'plugin_needs_dep' failed to import" in message and "no_such_dependency_xyz" in message
    assert "failed to import: RuntimeError: boom second line" in _error("m=plugin:plugin_broken:Mine")


def test_installed_entry_points_are_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = [EntryPoint(name="shout", value=f"{HERE}:Shout", group=plugins.ENTRY_POINT_GROUP),
                 EntryPoint(name="echo", value=f"{HERE}:Shout", group=plugins.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins, "entry_points",
                        lambda group: [ep for ep in installed if ep.group == group])
    spec = ServeSpec.parse("m=shout:chat")
    assert spec == ServeSpec("m", "shout", "chat", plugin=f"{HERE}:Shout")
    assert isinstance(make_backend(spec), Shout)
    # A built-in kind wins over an entry point of the same name.
    assert ServeSpec.parse("m=echo:chat") == ServeSpec("m", "echo", "chat")
    with pytest.raises(ValueError) as err:
        ServeSpec.parse("m=teleport")
    assert "embeddings, generate, ocr, clip, upstream, echo, shout" in str(err.value)
    assert "plugin:MODULE:CLASS" in str(err.value)
