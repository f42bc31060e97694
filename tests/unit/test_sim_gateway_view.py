"""The simulator's router is fed what the gateway's router is fed (issue 19, live vs simulated).

The switches sim_live turns on (`Policies.route_sample`, `prior_soon_s`, `expected_output_known`)
and what the simulator always tracks like the gateway (backlog_s, busy-at-dispatch flags,
streams' first-token samples), checked on a small bundled day.
"""

from __future__ import annotations

import dataclasses

from gpupool.routing.candidate import RouteRequest
from gpupool.sim import serving
from gpupool.sim.day import Day
from gpupool.sim.earth import build
from gpupool.sim.scenario import Policies, Scenario, load_bundled


def _small(**policies: object) -> Scenario:
    sc = dataclasses.replace(load_bundled("small"), providers=60, requests=2_000)
    return dataclasses.replace(sc, policies=dataclasses.replace(sc.policies, **policies))  # type: ignore[arg-type]


def test_a_request_looks_at_a_random_sample_of_the_online_providers_like_the_gateways_router() -> None:
    day = Day(build(_small()))
    day._step(0)
    view = day.views[0][0]
    assert len(view) > 12
    suspended = day.online_ids[3]
    day.trust.suspended[suspended] = True
    drawn: set[str] = set()
    for _ in range(200):
        cands = serving.draw(day, view, 6)
        ids = [c.provider_id for c in cands]
        assert len(ids) == 6 == len(set(ids))
        assert day.ids[suspended] not in ids
        drawn.update(ids)
    assert len(drawn) > 0.8 * len(view)  # random: over many requests nearly everyone is drawn
    # Nobody left to draw: the whole view (the gateway then scans every eligible session).
    for i in day.online_ids:
        day.trust.suspended[i] = True
    assert serving.draw(day, view, 6) is view


def test_drawn_candidates_are_the_views_candidates_of_the_same_providers() -> None:
    """`draw` builds each candidate with `View.at`, skipping the checks it has just made: the result
    must equal what indexing the view builds, held-back ones (draining) included."""
    day = Day(build(_small()))
    day._step(0)
    view = day.views[1][1]
    for n, i in enumerate(day.online_ids[:4]):
        day.own[1][i], day.total[i], day.backlog[1][i] = n, n + 1, 0.5 * n
    pos = {i: k for k, i in enumerate(day.online_ids)}
    for _ in range(50):
        for c in serving.draw(day, view, 6):
            assert not c.draining and c == view[pos[day.index[c.provider_id]]]
    for i in day.online_ids:
        day.trust.held_back[i] = True  # verdicts awaited everywhere: only held-back ones are left
    held = serving.draw(day, view, 6)
    assert held and all(c.draining and c == view[pos[day.index[c.provider_id]]] for c in held)


def test_the_router_tracks_backlog_and_ends_the_day_with_none_left() -> None:
    day = Day(build(_small(route_sample=6, prior_soon_s=0.25, expected_output_known=False)))
    seen_backlog = []
    original = day._dispatch

    def dispatch(r, i, cand, now, *rest):  # type: ignore[no-untyped-def]
        original(r, i, cand, now, *rest)
        seen_backlog.append(day.backlog[r.g][i])

    day._dispatch = dispatch  # type: ignore[method-assign]
    res = day.run()
    assert (res.served_by >= 0).mean() > 0.9
    assert max(seen_backlog) > 0  # the router's service estimates were summed...
    assert all(b == 0.0 for g in day.backlog for b in g)  # ...and settled when the answers came
    assert all(o == 0 for g in day.own for o in g)


def test_without_a_known_output_length_routing_times_answers_at_max_tokens() -> None:
    """The gateway sets no `expected_output_tokens` (it knows no typical length)."""
    for known in (True, False):
        sc = _small(expected_output_known=known)
        day = Day(build(sc))
        seen: list[RouteRequest] = []
        route = day._route

        def spy(r, route=route, seen=seen):  # type: ignore[no-untyped-def]
            seen.append(r.req)
            route(r)

        day._route = spy  # type: ignore[method-assign]
        day.run()
        chat = [q for q in seen if q.task == "generate"]
        assert chat
        want = min(sc.demand.chat_output_median, sc.demand.max_output_tokens) if known else sc.demand.max_output_tokens
        assert {q.output_tokens_for_time for q in chat} == {want}, known


def test_policies_default_to_the_internet_scale_view() -> None:
    p = Policies()
    assert (p.route_sample, p.prior_soon_s, p.expected_output_known) == (0, 0.0, True)
