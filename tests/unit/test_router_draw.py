"""Whom a request's serving set is drawn from in a big pool (gateway/dispatch/router.py): while no
trial of a new provider may start (`--trials-per-s` spent), only providers that answered before,
since a new one drawn would get no copy; otherwise the whole pool, so newcomers keep being tried.
Just after 10,000 fresh keys join, a draw of the whole pool is nearly all new (bench/scale)."""

from __future__ import annotations

from gpupool.config import GatewaySettings
from gpupool.gateway.dispatch.proven_sessions import TRIAL_BURST, Trials
from gpupool.gateway.dispatch.router import LiveRouter
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.peers.session import ProviderSession
from gpupool.identity import Identity
from gpupool.protocol import Hardware, ModelOffer, Offer

POOL = 2_000
PROVEN = 10


def router_with(n: int, trials_per_s: float) -> tuple[LiveRouter, list[ProviderSession]]:
    settings = GatewaySettings(trials_per_s=trials_per_s, trial_share=1.0)
    hub = Hub(settings, Identity.generate(), store=None)  # type: ignore[arg-type] - no peer connects
    router = LiveRouter(hub, settings)
    sessions = []
    for i in range(n):
        o = Offer(node_id=f"n{i}", hardware=Hardware(cpu="x", cpu_cores=1, memory_mb=1), region="eu",
                  max_concurrency=4, issued_at=0.0, models=[ModelOffer("m", "generate", "echo")])
        s = ProviderSession(node_id=f"n{i}", public_key=b"k" * 32, offer=o, ws=None,  # type: ignore[arg-type]
                            connected_at=0.0, models={m.name: m for m in o.models})
        hub.sessions[s.node_id] = s
        hub.index.add(s)
        sessions.append(s)
    for s in sessions[:PROVEN]:  # these answered before (what `on_success` records)
        router.record(s.node_id).proven = True
        router.proven.add(s)
    return router, sessions


def drawn(router: LiveRouter, draws: int = 200) -> set[str]:
    return {s.node_id for _ in range(draws) for s in router.serving("m")}


def test_with_the_trials_rate_spent_a_draw_holds_only_proven_providers() -> None:
    router, sessions = router_with(POOL, trials_per_s=1 / 60)  # one trial a minute, a bucket one deep
    proven = {s.node_id for s in sessions[:PROVEN]}
    assert len(drawn(router)) > 100  # a trial may start: the whole pool is drawn from
    assert router.trials.may_start() and not router.trials.could_start()  # that one trial taken
    assert drawn(router) == proven  # only they could take a request without a trial
    for s in sessions[:PROVEN]:  # none of them can take work: the whole pool again
        s.draining = True
    assert not drawn(router) & proven and len(drawn(router)) > 100


def test_with_no_trials_rate_the_whole_pool_is_drawn() -> None:
    router, _ = router_with(POOL, trials_per_s=0)  # 0: unlimited
    for _ in range(100):
        assert router.trials.may_start()
    assert len(drawn(router)) > 100


def test_trials_are_at_most_a_share_of_requests() -> None:
    """`--trial-share`: each request adds its share to the trials' credit; a trial takes a whole one.
    However fast requests come, at most that share (after a burst) carries a second copy."""
    trials = Trials(per_s=0, share=0.1)  # no bound in time: only the share
    started = 0
    for _ in range(1000):
        trials.requested()
        started += trials.may_start()
    assert 100 <= started <= 100 + TRIAL_BURST
    assert not trials.could_start()  # spent: the next request's pick goes to a proven provider
    unbounded = Trials(per_s=0, share=1.0)
    assert all(unbounded.may_start() for _ in range(1000))
