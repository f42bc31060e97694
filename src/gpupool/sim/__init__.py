"""Discrete-event simulator that drives the production routing code with a virtual clock.

    import random
    from gpupool.sim import build_world, make_jobs, make_policy, simulate

    rng = random.Random(7)
    world = build_world(2_000, rng)                    # providers over 6 regions
    jobs = make_jobs(world, 20_000, load=0.7, rng=rng)
    res = simulate(world, jobs, make_policy("gpupool", world, random.Random(1)), seed=3)
    print(res.summary())

`bench/policies/run.py` compares all policies at 10,000 providers.
Modules: engine (event queue, virtual clock), world (providers, regions, RTTs,
workload), policies (baselines, gpupool via `gpupool.routing`, oracle),
simulation (request life cycle and measurements).

The internet-scale day (`gpupool sim run`, docs/simulation.md) is separate: scenario (TOML
files, bundled in `scenarios/`), geo (cities, RTTs), earth (the world, vectorised), day (the
gateways and the real policies), trust (audits, reputation, suspension), cloud (the baseline),
report (summary.json, plots), cli.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpupool.sim.engine import Engine
    from gpupool.sim.policies import POLICIES, make_policy
    from gpupool.sim.simulation import SimResult, simulate
    from gpupool.sim.world import REGIONS, World, WorldConfig, build_world, make_jobs

# Loaded on first use: every gpupool process imports this package for `gpupool sim`'s commands
# (sim/cli.py), and the simulator (with all of gpupool.routing) is needed only when one runs.
_MODULE_OF = {"Engine": "engine", "POLICIES": "policies", "make_policy": "policies", "SimResult": "simulation",
              "simulate": "simulation", "REGIONS": "world", "World": "world", "WorldConfig": "world",
              "build_world": "world", "make_jobs": "world"}
__all__ = ["POLICIES", "REGIONS", "Engine", "SimResult", "World", "WorldConfig", "build_world",
           "make_jobs", "make_policy", "simulate"]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"gpupool.sim.{_MODULE_OF[name]}"), name)
