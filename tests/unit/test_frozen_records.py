"""frozen_records.py: cheap builds of the policies' frozen records are the real thing."""

from __future__ import annotations

import dataclasses

import pytest

from gpupool import frozen_records as records
from gpupool.routing.breaker import BreakerState
from gpupool.routing.candidate import Candidate, RouteRequest
from gpupool.routing.speed import SpeedEstimate, SpeedSample


def _same(built: object, made: object) -> None:
    assert type(built) is type(made)
    assert built == made and hash(built) == hash(made)
    for f in dataclasses.fields(made):  # type: ignore[arg-type]
        assert getattr(built, f.name) == getattr(made, f.name), f.name


def test_a_built_record_is_the_constructors_record() -> None:
    req = RouteRequest("m", "embeddings", input_tokens=40, max_output_tokens=0, items=5, region="eu-west",
                       stream=False, expected_output_tokens=None)
    _same(records.builder(RouteRequest)("m", "embeddings", 40, 0, 5, None, "eu-west", "prefer", False, None), req)
    sample = SpeedSample(elapsed_s=1.5, rtt_s=0.02, first_token_s=0.3, input_tokens=400, output_tokens=90,
                         items=0, waited=True)
    _same(records.builder(SpeedSample)(1.5, 0.02, 0.3, 400, 90, 0, True), sample)
    c = Candidate("p1", 2, 4, False, "eu", 0.03, 1, 2.5, 10, 20, 0.7, SpeedEstimate(1.0, 2.0),
                  None, BreakerState("open", 3, 9.0, 1), None)
    _same(records.builder(Candidate)(*(getattr(c, f.name) for f in dataclasses.fields(Candidate))), c)


def test_a_built_record_stays_frozen_and_the_builder_wants_every_field() -> None:
    req = records.builder(RouteRequest)("m", "generate", 1, 2, 1, None, None, "prefer", True, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.input_tokens = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        records.builder(SpeedSample)(1.0, 0.1)  # no defaults: a new field cannot be left out silently


def test_a_twin_of_another_layout_is_refused() -> None:
    """CPython checks the layouts on `__class__` assignment: a record can't become another class."""
    o = records.twin(SpeedSample)()
    with pytest.raises(TypeError):
        o.__class__ = RouteRequest
