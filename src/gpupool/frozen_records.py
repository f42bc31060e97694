"""Cheap construction of frozen slots records on hot paths (routing's, verify's, the simulator's).

    build = builder(RouteRequest)        # positional, every field, in declaration order
    req = build("m", "generate", 400, 1024, 1, None, "eu-west", "prefer", True, 180)
    assert req == RouteRequest("m", "generate", input_tokens=400, ...) and type(req) is RouteRequest

    Twin = twin(Candidate)               # the same slots, writable: set them, then
    c = Twin(); c.provider_id = ...; ...; c.__class__ = Candidate

A frozen dataclass's generated `__init__` sets each field with `object.__setattr__` (~2.4 µs for
`RouteRequest`'s ten, measured), and the simulator builds ~8 such records per request; the
policies themselves build one per answer or verdict (`routing.speed.observe`,
`verify.sampling.decide`, `verify.reputation.observe`), in the gateway as in the simulator. A twin
class with the very same `__slots__` is writable with plain attribute stores; assigning
`__class__` afterwards turns the object into the real record (CPython allows it because the
two layouts are identical, and refuses with TypeError if they ever differ). The result is a
genuine instance of the policy's class with the same field values, hash and equality as the
constructor's (tests/unit/test_frozen_records.py), so the policies see nothing different.
Every field must be given: there are no defaults here, and the builder checks the count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_twins: dict[type, type] = {}


def twin(cls: type) -> type:
    """A writable class with `cls`'s slots (same layout), whose instances may become `cls`."""
    got = _twins.get(cls)
    if got is None:
        slots = cls.__dict__["__slots__"]
        got = _twins[cls] = type(f"_{cls.__name__}Twin", (), {"__slots__": tuple(slots)})
    return got


def builder(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for the slots record `cls` that skips the frozen `__init__`."""
    names = tuple(cls.__dict__["__slots__"])
    args = [f"a{k}" for k in range(len(names))]
    body = "".join(f"    o.{n} = {a}\n" for n, a in zip(names, args))
    src = f"def build({', '.join(args)}):\n    o = Twin()\n{body}    o.__class__ = cls\n    return o\n"
    ns: dict[str, Any] = {"Twin": twin(cls), "cls": cls}
    exec(src, ns)  # noqa: S102 - generated from the class's own slot names, nothing else
    return ns["build"]  # type: ignore[no-any-return]
