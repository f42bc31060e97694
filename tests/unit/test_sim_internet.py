"""The internet-scale simulator: scenario files, one small day, the real policies, the command.

Small scenarios only (a few seconds each); the 100k-provider day is a benchmark (bench/README.md).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpupool.cli import app
from gpupool.sim import report
from gpupool.sim.day import Day
from gpupool.sim.earth import build
from gpupool.sim.scenario import Scenario, ScenarioError, bundled, load, load_bundled, parse

KEYS = ("p50_s", "p99_s", "cost_per_mtok_usd", "failed_share")


def _small(**changes: object) -> Scenario:
    return dataclasses.replace(load_bundled("small"), **changes)  # type: ignore[arg-type]


def _run(sc: Scenario) -> tuple[dict, object]:  # type: ignore[type-arg]
    earth = build(sc)
    res = Day(earth).run()
    return report.summarize(earth, res), res


@pytest.mark.parametrize("text, words", [
    ("providers = 'many'", "providers: expected an integer"),
    ("colour = 1", "unknown key 'colour'"),
    ("[cloud]\ncold_start = 5", "[cloud]: unknown key 'cold_start'"),
    ("[demand]\nmix = { chat = 0.9, embed = 0.3 }", "[demand] mix: shares must be >= 0 and add up to 1"),
    ("[[tiers]]\nname = 'x'\nkind = 'laptop'\nshare = 1.0", "kind must be consumer or datacenter"),
    ("[gateways]\nus-east = 'atlantis'", "unknown region or city"),
    ("providers = ", "not valid TOML"),
])
def test_bad_scenario_files_fail_in_one_line_naming_the_key(text: str, words: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(text, "scenario bad.toml")
    assert words in str(e.value) and str(e.value).startswith("scenario bad.toml: ") and "\n" not in str(e.value)


def test_bundled_scenarios_load_and_the_default_is_internet_scale(tmp_path: Path) -> None:
    assert {"internet-100k", "small"} <= set(bundled())
    big = load_bundled("internet-100k")
    assert big.providers == 100_000 and big.requests == 10_000_000 and len(big.cloud.regions) == 3
    assert all(r.usd_per_gpu_hour > 5 and r.source for r in big.cloud.regions)
    (tmp_path / "s.toml").write_text("providers = 10\nrequests = 100\n[market]\nfee_bps = 0\n")
    sc = load(tmp_path / "s.toml")
    assert sc.providers == 10 and sc.market.fee_bps == 0 and sc.tiers == Scenario().tiers  # defaults fill in
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load(tmp_path / "missing.toml")


def test_a_small_day_answers_the_questions() -> None:
    s, res = _run(_small(requests=15_000))
    for system in ("pool", "cloud", "hybrid"):
        assert all(s[system][k] is not None for k in KEYS), s[system]
        assert 0 < s[system]["p50_s"] <= s[system]["p99_s"]
    # The pool is far cheaper per token than renting H100s by the hour for the same traffic.
    assert s["pool"]["cost_per_mtok_usd"] * 3 < s["cloud"]["cost_per_mtok_usd"]
    assert s["cheater_identities"] > 0 and s["cheaters_caught_share"] > 0.3
    assert s["honest_suspended"] == 0
    assert s["audits"] > 0 and s["hedges"] > 0 and s["batch"]["done"] > 0
    assert s["broken_streams"] >= s["continued_streams"] > 0  # churn broke streams; most were continued
    assert 0 < s["utilisation"] < 1


def test_an_overloaded_pool_overflows_to_the_fallback_lane_in_the_hybrid() -> None:
    s, _ = _run(_small(providers=4, requests=12_000))
    assert s["pool"]["failed_share"] > 0.01
    assert s["fallback_share"] > 0.01
    assert s["hybrid"]["failed_share"] < s["pool"]["failed_share"]


def test_the_simulator_runs_the_gateways_own_policy_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same objects as the gateway imports; swapping a policy in its module changes the run."""
    import gpupool.gateway.dispatch.router as router
    import gpupool.gateway.fallback.lanes as lanes
    import gpupool.gateway.trust.audits as audits
    from gpupool.routing import fallback
    from gpupool.routing import policy as routing_policy
    from gpupool.verify import sampling

    # The gateway's router looks the policy up in its module at each pick, so a swap reaches it too
    # (tests/integration/test_sim_live.py swaps it in a real gateway process).
    assert router.routing_policy is routing_policy and not hasattr(router, "pick_with_reasons")
    assert audits.decide is sampling.decide and lanes.choose_lanes is fallback.choose_lanes

    sc = _small(providers=8, requests=4_000)
    base, _ = _run(sc)
    # Audit every answer: verify.sampling.decide (which the gateway's audits call) reads audit_rate.
    with monkeypatch.context() as m:
        m.setattr(sampling, "audit_rate", lambda record, policy=None: 1.0)
        all_audited, _ = _run(sc)
    assert all_audited["audits"] > 2 * base["audits"]
    # Never pick anything: every interactive request goes to the lane.
    with monkeypatch.context() as m:
        m.setattr(routing_policy, "pick_with_reasons",
                  lambda *a, **k: routing_policy.Decision(None, excluded={"draining": len(a[0])}))
        no_pick, _ = _run(sc)
    assert no_pick["fallback_share"] == 1.0 > base["fallback_share"]
    # A fallback policy that never takes a request: the hybrid fails like the pool alone.
    monkeypatch.setattr(fallback, "choose_lanes", lambda lanes, reason, need, fee: fallback.LaneDecision((), reason))
    no_lane, _ = _run(sc)
    assert no_lane["fallback_share"] == 0 and no_lane["hybrid"]["failed_share"] == no_lane["pool"]["failed_share"]


def test_runs_are_deterministic_given_the_scenario_seed() -> None:
    a, _ = _run(_small(requests=3_000))
    b, _ = _run(_small(requests=3_000))
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b


def test_command_runs_a_scenario_writes_summary_and_plots_and_compares(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(app, ["sim", "run", "--scenario", "small", "--requests", "3000", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["providers"] == 60 and summary["requests"] == 3000 and summary["wall_s"] > 0
    for key in ("fallback_share", "owner_margin_median_usd_per_day", "cheaters_caught_share", "honest_suspended",
                "continued_streams"):
        assert key in summary
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 7 and all((out / p).stat().st_size > 5_000 for p in pngs)
    assert "requests" in r.output  # progress lines
    r = runner.invoke(app, ["sim", "compare", str(out / "summary.json"), str(out / "summary.json")])
    assert r.exit_code == 0 and "pool.p99_s" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[demand]\nmix = { chat = 2.0 }\n")
    r = runner.invoke(app, ["sim", "run", str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "bad.toml: [demand] mix: shares" in r.output
    r = runner.invoke(app, ["sim", "run", "--scenario", "nope"])
    assert r.exit_code == 1 and "no bundled scenario 'nope'" in r.output
    r = runner.invoke(app, ["sim", "compare", str(bad), str(bad)])
    assert r.exit_code == 1 and "not JSON" in r.output


def test_the_cloud_bills_gpu_hours_scales_up_after_a_cold_start_and_spills_when_full() -> None:
    from gpupool.sim import geo
    from gpupool.sim.cloud import Cloud

    sc = load_bundled("small")  # 2 warm GPUs per region, at most 20, 120 s cold start
    idle = Cloud(sc, geo.city_rtt_s())
    hourly = sum(r.usd_per_gpu_hour for r in sc.cloud.regions)
    # Idle: the 2 warm GPUs run until idle_shutdown_s (15 min) after the first quiet minute, then 1 stays.
    assert idle.cost_usd(3600) == pytest.approx(hourly * (2 * 960 + 1 * 2640) / 3600)
    busy = Cloud(sc, geo.city_rtt_s())
    paris = geo.city("paris")
    lat = [busy.serve(t * 0.01, paris, False, 400, 500, 1.0)[0] - t * 0.01 for t in range(12_000)]
    assert max(busy.gpus) == 20  # scaled to its limit
    assert max(lat) > sc.cloud.cold_start_s  # requests queued through the cold start
    regions = {busy.serve(120.0, paris, False, 400, 500, 1.0)[1] for _ in range(200)}
    assert busy.order[paris][0] not in regions  # the nearest region was full and queued: spilled elsewhere
    assert busy.cost_usd(3600) > 2 * idle.cost_usd(3600)  # 20 GPUs for ~17 min, then back down


def test_the_views_candidates_equal_the_ones_the_constructor_builds() -> None:
    """`View.__getitem__` and `View.at` set a Candidate's slots directly (speed): every field, the same
    values, and the same Candidate both ways."""
    from gpupool.routing.candidate import Candidate

    day = Day(build(_small(providers=40, requests=200)))
    day._step(0)
    for g in range(len(day.gateways)):
        for view in day.views[g]:
            assert len(view) > 0
            for k in range(len(view)):
                c = view[k]
                fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(Candidate)}
                assert c == Candidate(**fields) and hash(c) == hash(Candidate(**fields))
                i = day.online_ids[k]
                price_in = (day.price_embed if view.embed else day.price_in)[i]
                assert (c.provider_id, c.price_in, c.rtt_s, c.speed, c.models, c.backlog_s) == (
                    day.ids[i], price_in, float(day.earth.gw_rtt[g][i]), view.speed[i], None, None)
                assert view.at(i, c.draining) == c and type(view.at(i, c.draining)) is Candidate


def test_a_day_leaves_no_reference_cycles() -> None:
    """`Day.run` turns the cyclic collector off (speed): that is only safe while it makes no cycles."""
    import gc

    day = Day(build(_small(requests=3_000)))
    gc.collect()
    enabled = gc.isenabled()
    day.run()
    assert gc.isenabled() == enabled
    assert gc.collect() == 0


def test_a_day_split_over_two_processes_answers_like_one() -> None:
    """sim/shards.py: each process a half-world (every other provider, every other request); merged,
    the answers match the one-process day's within sampling noise, and every request was served by a
    provider of its own shard."""
    from gpupool.sim.shards import run_sharded

    sc = _small(providers=1_000, requests=12_000)
    earth = build(sc)
    one = report.summarize(earth, Day(earth).run())
    res = run_sharded(earth, shards=2)
    two = report.summarize(earth, res)
    assert res.counts["shards"] == 2
    served = res.served_by >= 0
    assert served.mean() > 0.9
    assert np.all(res.served_by[served] % 2 == np.arange(len(res.served_by))[served] % 2)
    assert two["cloud"] == one["cloud"]  # the cloud baseline runs once, over every arrival
    for s in ("pool", "hybrid"):
        for k in ("p50_s", "p99_s", "cost_per_mtok_usd"):
            assert two[s][k] == pytest.approx(one[s][k], rel=0.1), (s, k)
    assert two["audits"] == pytest.approx(one["audits"], rel=0.05)
    assert two["batch"]["items"] == one["batch"]["items"]
    assert two["cheater_identities"] == pytest.approx(one["cheater_identities"], rel=0.2)
    assert np.all(res.earnings_usd >= 0) and res.earnings_usd[0::2].sum() > 0 and res.earnings_usd[1::2].sum() > 0


def test_providers_with_many_verdicts_awaited_are_held_back_like_the_gateway_does() -> None:
    """On probation every answer is audited; from verify.sampling.MAX_AWAITING_VERDICTS awaited verdicts
    the router's view shows the provider as not taking work (the gateway's `Router.serving`), until
    verdicts come back."""
    from gpupool.sim.trust import Trust
    from gpupool.verify.judgement import PASS
    from gpupool.verify.sampling import MAX_AWAITING_VERDICTS

    day = Day(build(_small(providers=40, requests=200)))
    day._step(0)
    trust: Trust = day.trust  # type: ignore[assignment]
    view = day.views[0][0]
    k = next(k for k in range(len(view)) if not view[k].draining)
    i = day.online_ids[k]
    for n in range(MAX_AWAITING_VERDICTS):
        assert not view[k].draining
        assert trust.served(i, f"r{n}", 0.0)  # probation: audited
    assert trust.held_back[i] and view[k].draining
    trust.verdict(i, trust.identity[i], PASS, 1.0)
    assert not trust.held_back[i] and not view[k].draining


def test_the_command_reruns_itself_with_huge_pages_and_answers_the_same(tmp_path: Path) -> None:
    """sim/memory.py: a real `gpupool sim run` re-executes under glibc malloc with THP (where glibc
    has the tunable); the allocator changes no decision, so the summaries are equal but for wall_s."""
    import os
    import subprocess
    import sys

    from gpupool.sim import memory

    assert memory.hugepage_env({"PYTHONMALLOC": "pymalloc"}) is None  # the user's choice stands
    assert memory.hugepage_env({memory.MARKER: "1"}) is None  # never twice
    if not memory.glibc_supports_hugetlb():
        pytest.skip("needs Linux with glibc >= 2.35")
    env = memory.hugepage_env({"PATH": "/usr/bin"})
    assert env is not None and memory.active(env) and env["PATH"] == "/usr/bin"
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONMALLOC", "GLIBC_TUNABLES", memory.MARKER)}
    runs = {}
    for flag in ("--hugepages", "--no-hugepages"):
        out = tmp_path / flag.strip("-")
        r = subprocess.run([sys.executable, "-m", "gpupool", "sim", "run", "--scenario", "small", "--requests",
                            "3000", "--no-plots", flag, "--out", str(out)], check=False, env=base,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert ("memory: glibc malloc with transparent huge pages" in r.stdout) == (flag == "--hugepages")
        runs[flag] = json.loads((out / "summary.json").read_text())
        runs[flag].pop("wall_s")
    assert runs["--hugepages"] == runs["--no-hugepages"]
