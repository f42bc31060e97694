"""`gpupool sim ...`: run a simulated day from a scenario file, compare two runs.

    gpupool sim run SCENARIO.toml --out DIR       # DIR/summary.json and DIR/*.png
    gpupool sim run --scenario internet-100k      # a bundled scenario (`gpupool sim list`)
    gpupool sim run ... --processes 1             # one process (default: 2 from 10,000 providers)
    gpupool sim run ... --no-hugepages            # keep Python's allocator (default: glibc + THP, sim/memory.py)
    gpupool sim compare A.json B.json             # two summaries side by side
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gpupool.cli_support import HELP, fail

# From this many providers a day is split over processes by default: each shard is then still a
# pool of thousands, where sampling a few candidates from half of it changes only statistics.
SHARD_FROM = 10_000

sim_app = typer.Typer(help="Simulate a day of an internet-scale pool against the cloud (the real policies).",
                      no_args_is_help=True, rich_markup_mode=None, context_settings=HELP)


@sim_app.command("list")
def list_scenarios() -> None:
    """List the bundled scenarios."""
    from gpupool.sim.scenario import bundled

    for name in bundled():
        typer.echo(name)


@sim_app.command("run")
def run(
    scenario_file: Annotated[Optional[Path], typer.Argument(help="a scenario TOML file")] = None,
    scenario: Annotated[Optional[str], typer.Option("--scenario", help="a bundled scenario by name "
                                                    "(see `gpupool sim list`)")] = None,
    out: Annotated[Path, typer.Option("--out", help="where summary.json and the plots go")] = Path("sim-out"),
    providers: Annotated[Optional[int], typer.Option(min=1, help="override the scenario's providers")] = None,
    requests: Annotated[Optional[int], typer.Option(min=1, help="override the scenario's requests")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write the PNG plots")] = True,
    processes: Annotated[Optional[int], typer.Option(
        min=1, max=64, help="split the pool's day over this many processes (sim/shards.py; default: 2 from "
        f"{SHARD_FROM:,} providers on a machine with 2+ cores, else 1)")] = None,
    hugepages: Annotated[bool, typer.Option(
        "--hugepages/--no-hugepages", help="re-run the command under glibc malloc with transparent huge "
        "pages where available (sim/memory.py: same results, less CPU)")] = True,
) -> None:
    """Run one simulated day: the pool, the cloud and the hybrid on the same arrivals."""
    import dataclasses
    import time

    from gpupool.sim.scenario import ScenarioError, load, load_bundled, validate

    if (scenario_file is None) == (scenario is None):
        raise fail("name a scenario file or --scenario NAME (one of them)", 2)
    # Only a real `gpupool sim run` command line is re-executed (not an in-process call, e.g. a test's).
    if hugepages and sys.argv[1:3] == ["sim", "run"]:
        from gpupool.sim.memory import hugepage_env

        env = hugepage_env(os.environ)
        if env is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, "-m", "gpupool", *sys.argv[1:]], env)
    try:
        sc = load(scenario_file) if scenario_file is not None else load_bundled(scenario or "")
        if providers or requests:
            sc = validate(dataclasses.replace(sc, providers=providers or sc.providers,
                                              requests=requests or sc.requests))
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    from gpupool.sim import report
    from gpupool.sim.day import Day
    from gpupool.sim.earth import build

    t0 = time.perf_counter()
    typer.echo(f"building the world: {sc.providers:,} providers, {sc.requests:,} requests over {sc.hours:g} h")
    from gpupool.sim.memory import active

    if active(os.environ):
        typer.echo("memory: glibc malloc with transparent huge pages (sim/memory.py; --no-hugepages: off)")
    earth = build(sc)

    def progress(done: int, total: int, wall: float) -> None:
        rate = done / max(wall, 1e-9)
        typer.echo(f"  {done:>12,} / {total:,} requests  {done / total:6.1%}  {rate:,.0f}/s  "
                   f"eta {(total - done) / max(rate, 1e-9):,.0f} s", err=True)

    if processes is None:
        processes = 2 if sc.providers >= SHARD_FROM and (os.cpu_count() or 1) >= 2 else 1
    if processes > 1:
        from gpupool.sim.shards import run_sharded

        typer.echo(f"the pool's day in {processes} processes (sim/shards.py), the cloud baseline beside them")
        result = run_sharded(earth, processes, progress=progress)
    else:
        result = Day(earth, progress=progress, progress_every=max(sc.requests // 20, 1000)).run()
    result.wall_s = time.perf_counter() - t0
    summary = report.summarize(earth, result)
    path = report.write_summary(summary, out)
    typer.echo(f"wrote {path}")
    if plots:
        try:
            for p in report.plot(earth, result, out):
                typer.echo(f"wrote {p}")
        except ImportError:
            typer.echo("no plots: matplotlib is not installed (pip install 'gpupool[sim]')", err=True)
    for s in ("pool", "cloud", "hybrid"):
        x = summary[s]
        typer.echo(f"{s:<7} p50 {x['p50_s']} s  p99 {x['p99_s']} s  ${x['cost_per_mtok_usd']}/1M tokens  "
                   f"failed {x['failed_share']:.2%}")
    typer.echo(f"fallback {summary['fallback_share']:.2%}  owner margin (median) "
               f"${summary['owner_margin_median_usd_per_day']}/day  cheaters caught "
               f"{summary['cheaters_caught_share']}  honest suspended {summary['honest_suspended']}  "
               f"wall {summary['wall_s']} s")


@sim_app.command("compare")
def compare(a: Annotated[Path, typer.Argument(help="summary.json of one run")],
            b: Annotated[Path, typer.Argument(help="summary.json of another")]) -> None:
    """Show two runs' summaries side by side (* marks a difference)."""
    from gpupool.sim.report import compare_text

    def read(p: Path) -> dict:  # type: ignore[type-arg]
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise fail(f"cannot read {p}: {exc.strerror or exc}") from None
        except ValueError:
            raise fail(f"{p} is not JSON (expected a summary.json from `gpupool sim run`)") from None
        if not isinstance(data, dict) or "pool" not in data:
            raise fail(f"{p} is not a summary.json from `gpupool sim run`")
        return data

    typer.echo(compare_text(read(a), read(b), a.parent.name or a.name, b.parent.name or b.name))
    sys.stdout.flush()
