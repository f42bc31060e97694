"""The simulator against real processes: one small network, run live and then simulated.

    spec = Spec(seconds=60, rate=8)
    live = run_live(tmp_path, spec)        # real gateway, 12 echo providers behind delaying relays, a checker
    sim = run_sim(spec, live)              # the same arrivals through gpupool.sim.Day
    rows, gaps = agreement(live, sim)      # p50, p99 and each provider's share, live vs simulated

The network: 12 providers in 3 regions, each region behind a TCP relay that delays every
byte by the region's one-way delay (nothing tells the gateway: it measures RTTs by ping);
echo backends that take `ms_per_token` per word; one provider is killed mid-run (a
crash: its streams break and continue elsewhere); one cheats (a raw checker fails its
audits softly, as a checker would for a smaller model) and is suspended by the gateway.

The simulator gets only what was measured, not fitted to the answer, and its router is fed
what the gateway's router is fed (sim/day.py with `Policies(prior_soon_s=PRIOR_AT_ONCE_S)`:
answers ranked at their typical length, the prior refreshed at a provider's first answer,
streams' first chunks splitting prefill from decode, the router's own backlog_s and
busy-at-dispatch flags):
- each backend's time per token;
- each link's RTT as the gateway's router saw it through the run (polled every 0.25 s and
  replayed: on a loaded machine it moves with the CPU queue, and it decides which of the
  providers behind one relay is tried first);
- the request path's fixed and per-token overheads and noise (gateway, client, asyncio
  timers), measured on the load's own requests that found a free slot (no queueing), or on
  a calibration phase of one request at a time when too few did; the calibration requests
  also run in the simulation (they teach both routers their first speeds) and are left out
  of the comparison;
- the host's stalls, from the same polls as a probe (`host_stalls`): on a 2-core machine
  shared with other sessions the client or the gateway stalls for up to seconds now and
  then; requests open across a stall are held up by it in the simulation too.
Arrivals, prompt lengths, the crash time and the cheater are the same in both.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import openai

from gpupool.devnet import Network
from gpupool.sim import geo
from gpupool.sim.day import STREAM, Day, DayResult
from gpupool.sim.earth import STRATEGIES, Earth
from gpupool.sim.scenario import Cheaters, Churn, Demand, Policies, Scenario
from tests.integration.raw_peers import judge_jobs, raw_checker

RELAY = Path(__file__).with_name("delay_relay.py")
REGION_DELAY_MS = {"us-east": 5.0, "eu-west": 25.0, "ap-northeast": 60.0}  # one way
MS_PER_TOKEN = (20.0, 30.0, 40.0, 60.0)  # the 4 providers of each region: few, slow tokens keep the CPU idle
CONCURRENCY = 2
MAX_TOKENS = 64
PRIOR_AT_ONCE_S = 1e-6  # the simulator's "at once": just after the answer that measured the provider
ROUTE_SAMPLE = 6  # the gateway's default `route_sample` (config.py), which run_live leaves as it is
STALL_S = 0.2  # a probe answered this much later than the probes' median saw the host stall
MIN_FREE_SLOT = 40  # load requests that found a free slot, to measure the path on (else the calibration's)
RTT_POLL_S = 0.25  # how often the gateway's RTTs are read during the run (it pings every 0.25 s)


@dataclass(frozen=True)
class Spec:
    seconds: float = 20.0  # of load, after calibration
    rate: float = 8.0  # requests per second (Poisson)
    words_median: int = 8  # prompt = answer length (echo), lognormal, 2..24
    calibration: int = 40  # requests one at a time, before the load
    crash_at: float = 0.5  # share of the load's duration at which provider `crash` is killed
    crash: int = 1  # index into the providers (region-major)
    cheater: int = 0  # the fastest near one: both runs send it work at once, so both must suspend it
    seed: int = 5

    def providers(self) -> list[tuple[str, float, float]]:
        """(region, one-way delay s, s per token) per provider."""
        return [(r, d / 1000, ms / 1000) for r, d in REGION_DELAY_MS.items() for ms in MS_PER_TOKEN]


@dataclass
class Live:
    sent: list[float] = field(default_factory=list)  # seconds since the calibration began
    latency: list[float] = field(default_factory=list)  # NaN: failed
    provider: list[int] = field(default_factory=list)  # -1: failed
    words: list[int] = field(default_factory=list)
    crash_t: float = math.nan
    overhead_s: float = 0.0  # measured: fixed part of the request path
    per_token_s: float = 0.0  # measured: what each token costs beyond the backend's sleep
    sigma: float = 0.0  # measured: spread of the calibration's service times (lognormal)
    suspended: list[int] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)  # measured by the gateway, per provider, before the load
    # The gateway's smoothed RTTs as its router saw them through the run: poll times, and per poll one
    # value per provider (NaN: not connected).
    rtt_at: list[float] = field(default_factory=list)
    rtt_seen: list[list[float]] = field(default_factory=list)
    path_from: str = ""  # what the path model was measured on
    # The same polls as a probe of the host: when each was sent and how long the gateway took to answer
    # it. A loaded machine stalls every process now and then (seconds at load 15); see `host_stalls`.
    probe_sent: list[float] = field(default_factory=list)
    probe_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def _words(spec: Spec, rng: random.Random) -> int:
    return int(min(max(round(spec.words_median * math.exp(rng.gauss(0, 0.6))), 2), 24))


async def _ask(client: openai.AsyncOpenAI, n: int, index: dict[str, int]) -> tuple[float, int]:
    prompt = " ".join(f"w{k}" for k in range(n))
    t0 = time.perf_counter()
    try:
        async with client.chat.completions.with_streaming_response.create(
                model="echo", messages=[{"role": "user", "content": prompt}], stream=True,
                max_tokens=MAX_TOKENS) as resp:
            node = resp.headers.get("x-gpupool-provider", "")
            async for _ in await resp.parse():
                pass
        return time.perf_counter() - t0, index.get(node, -1)
    except openai.APIError:
        return math.nan, -1


async def _drive(net: Network, spec: Spec, live: Live, index: dict[str, int]) -> None:
    rng = random.Random(spec.seed)
    cheater_id = next(k for k, v in index.items() if v == spec.cheater)
    checker = net.checker_identity("checker")
    ws = await raw_checker(net, checker, ["echo"])
    judge = asyncio.create_task(judge_jobs(ws, checker, lambda job: job.receipt.node_id != cheater_id, [],
                                           hard=False))
    client = openai.AsyncOpenAI(base_url=net.gateway_url + "/v1", api_key=net.dev_key(), timeout=30,
                                max_retries=0)
    # Warm the client's connection and the gateway's request path with a request nothing can serve (no
    # provider is picked, so the router learns nothing): a first request took ~1 s more than the next
    # ones, and the router, which refreshes its prior 0.25 s after a first answer, decided differently.
    with contextlib.suppress(openai.APIError):
        await client.chat.completions.create(model="warm-up", messages=[{"role": "user", "content": "a"}])
    t0 = time.perf_counter()
    poller = asyncio.create_task(_poll_rtts(net, len(spec.providers()), index, live, t0))
    try:
        # Calibration: one at a time (nothing queues), so each latency is path + service.
        for _ in range(spec.calibration):
            n = _words(spec, rng)
            live.sent.append(time.perf_counter() - t0)
            lat, who = await _ask(client, n, index)
            live.latency.append(lat)
            live.provider.append(who)
            live.words.append(n)
        start = time.perf_counter() - t0 + 0.5
        at, plan = start, []
        while at < start + spec.seconds:
            at += rng.expovariate(spec.rate)
            plan.append((at, _words(spec, rng)))
        live.crash_t = start + spec.crash_at * spec.seconds

        async def one(k: int, at: float, n: int) -> None:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            live.sent[k] = time.perf_counter() - t0
            live.latency[k], live.provider[k] = await _ask(client, n, index)

        async def crash() -> None:
            await asyncio.sleep(max(0.0, live.crash_t - (time.perf_counter() - t0)))
            live.crash_t = time.perf_counter() - t0
            net.kill_provider(net.providers[spec.crash])

        base = len(live.sent)
        live.sent += [at for at, _ in plan]
        live.latency += [math.nan] * len(plan)
        live.provider += [-1] * len(plan)
        live.words += [n for _, n in plan]
        await asyncio.gather(crash(), *(one(base + k, at, n) for k, (at, n) in enumerate(plan)))
    finally:
        poller.cancel()
        judge.cancel()
        await ws.close()
        await client.close()


async def _poll_rtts(net: Network, n: int, index: dict[str, int], live: Live, t0: float) -> None:
    """The gateway's smoothed RTT to each provider, every RTT_POLL_S: what its router saw, which the
    simulator replays (on a loaded machine it moves with the CPU queue, and it breaks ties between
    providers behind the same relay)."""
    async with httpx.AsyncClient(base_url=net.gateway_url, verify=net.verify, timeout=5,
                                 headers={"Authorization": f"Bearer {net.admin_token}"}) as http:
        while True:
            sent = time.perf_counter() - t0
            try:
                data = (await http.get("/admin/providers")).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                await asyncio.sleep(RTT_POLL_S)
                continue
            live.probe_sent.append(sent)
            live.probe_s.append(time.perf_counter() - t0 - sent)
            seen = [math.nan] * n
            for p in data:
                if p["node_id"] in index and p["rtt_ms"] is not None:
                    seen[index[p["node_id"]]] = p["rtt_ms"] / 1000
            live.rtt_at.append(time.perf_counter() - t0)
            live.rtt_seen.append(seen)
            await asyncio.sleep(RTT_POLL_S)


def host_stalls(live: Live) -> list[tuple[float, float]]:
    """When the request path stalled, from the probes (merged, sorted intervals): a probe answered
    STALL_S or more after the probes' median spent the excess waiting on the client's event loop (it
    shares the prober's) or the gateway's, and so did every request open then (a 2-core machine
    shared with other sessions' tests stalls for up to seconds). The probes are not the requests
    compared, so this is a measurement of the host, like the RTTs."""
    if not live.probe_s:
        return []
    base = float(np.median(live.probe_s))
    # (Not the prober's late wake-ups between probes: they are its own event loop's lag, busy with the
    # client's streams, and counted as stalls they put the simulated p99 at 1.3-3x the live one.)
    spans = [(s + base, s + p) for s, p in zip(live.probe_sent, live.probe_s) if p - base >= STALL_S]
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _stalled(stalls: list[tuple[float, float]], a: float, b: float) -> float:
    """Seconds of host stall within [a, b]."""
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in stalls)


def rtt_at(live: Live, i: int, t: float) -> float:
    """Provider `i`'s RTT as the gateway last reported it at or before `t` (else the pre-load median)."""
    k = bisect.bisect_right(live.rtt_at, t) - 1
    while k >= 0 and math.isnan(live.rtt_seen[k][i]):
        k -= 1
    return live.rtt_seen[k][i] if k >= 0 else live.rtt[i]


def _free_slot_requests(spec: Spec, live: Live) -> list[int]:
    """The load's requests that found a free slot at their provider: fewer than CONCURRENCY others to it
    were open at the client when it was sent (a client-side interval holds the provider's), so their
    latency is path + service, without queueing. The crashed provider's last ones are left out (a
    continued stream is served by two)."""
    sent, lat, who = np.array(live.sent), np.array(live.latency), np.array(live.provider)
    end = sent + np.nan_to_num(lat, nan=np.inf)
    stalls = host_stalls(live)
    out = []
    for k in range(spec.calibration, len(sent)):
        i = who[k]
        if i < 0 or math.isnan(lat[k]) or (i == spec.crash and end[k] > live.crash_t - 1.0) \
                or _stalled(stalls, sent[k], end[k]) > 0:  # the stall is modelled on its own
            continue
        if np.count_nonzero((who == i) & (sent < sent[k]) & (end > sent[k])) < CONCURRENCY:
            out.append(k)
    return out


def _measure_path(spec: Spec, live: Live) -> None:
    """Fixed and per-token overheads of the request path and the spread of service times, from
    the calibration: a robust line (Theil-Sen) through latency - link RTT - backend sleeps
    against the number of tokens (one slow first request, a connection being set up, or a
    moment of a busy machine must not tilt it)."""
    provs = spec.providers()
    # Measured on the load itself where enough requests found a free slot: the machine's load moves
    # with other processes, and a path measured before the load would miss what it costs during it.
    free = _free_slot_requests(spec, live)
    use = free if len(free) >= MIN_FREE_SLOT else [k for k in range(spec.calibration)
                                                   if live.provider[k] >= 0 and not math.isnan(live.latency[k])]
    live.path_from = f"{len(free)} load requests that found a free slot" if use is free else \
        f"{len(use)} calibration requests"
    pts = [(float(live.words[k]), live.latency[k] - rtt_at(live, i, live.sent[k]) - live.words[k] * provs[i][2],
            provs[i][2]) for k in use if (i := live.provider[k]) >= 0]
    slopes = [(y2 - y1) / (x2 - x1) for a, (x1, y1, _) in enumerate(pts) for x2, y2, _ in pts[a + 1:] if x2 != x1]
    live.per_token_s = max(float(np.median(slopes)), 0.0) if slopes else 0.0
    live.overhead_s = max(float(np.median([y - live.per_token_s * x for x, y, _ in pts])), 0.0)
    # The rest is the service time's own noise, as a lognormal sigma (median absolute deviation).
    resid = np.array([math.log(max(x * (spt + live.per_token_s) + y - live.overhead_s - live.per_token_s * x, 1e-3)
                               / (x * (spt + live.per_token_s))) for x, y, spt in pts])
    live.sigma = float(np.median(np.abs(resid - np.median(resid))) * 1.4826)


def run_live(home: Path, spec: Spec) -> Live:
    live = Live()
    relays: list[subprocess.Popen[bytes]] = []
    net = Network(home)
    t0 = time.perf_counter()
    try:
        net.start_gateway(extra=["--ping-interval-s", "0.25"])
        port = int(net.gateway_url.rsplit(":", 1)[1])
        relay_port = {}
        for r, delay in REGION_DELAY_MS.items():
            relay_port[r] = _free_port()
            relays.append(subprocess.Popen([sys.executable, str(RELAY), str(relay_port[r]), "127.0.0.1", str(port),
                                            str(delay)], stdout=subprocess.PIPE))
            assert relays[-1].stdout is not None and b"ready" in relays[-1].stdout.readline()
        for region, _, spt in spec.providers():
            net.start_provider([f"echo=echo:chat?delay_ms={spt * 1000:g}"], region=region,
                               max_concurrency=CONCURRENCY, gateways=[f"ws://127.0.0.1:{relay_port[region]}"])
        net.wait_for_models({"echo": len(spec.providers())}, timeout=90)
        ids = [p.node_id for p in net.providers]
        index = {node: k for k, node in enumerate(ids)}
        live.rtt = _measure_rtts(net, spec, index)
        asyncio.run(_drive(net, spec, live, index))
        live.suspended = [index[r["node_id"]] for r in net.admin("/admin/audits")
                          if r.get("suspended") and r["node_id"] in index]
    finally:
        net.stop(timeout=10)
        for r in relays:
            r.kill()
            r.wait()
    live.wall_s = time.perf_counter() - t0
    _measure_path(spec, live)
    return live


def _measure_rtts(net: Network, spec: Spec, index: dict[str, int], timeout: float = 30) -> list[float]:
    """Each link's RTT as the gateway measures it by ping (it is told nothing): the median of
    a few polls once all are known and at least the relay's round trip. On a busy machine
    this is above twice the relay's delay (the relay's and the peers' event loops wait for
    a core too), and it is what the simulator is given as the link's RTT."""
    provs = spec.providers()
    deadline = time.monotonic() + timeout
    polls: list[dict[int, float]] = []
    while len(polls) < 5:
        rtts = {index[p["node_id"]]: p["rtt_ms"] for p in net.admin("/admin/providers") if p["node_id"] in index}
        if len(rtts) == len(provs) and all(r is not None and r >= 2 * provs[i][1] * 1000 * 0.8
                                           for i, r in rtts.items()):
            polls.append(rtts)
        elif time.monotonic() > deadline:
            raise AssertionError(f"RTTs never settled near the relays' delays: {rtts}")
        time.sleep(0.5)
    return [float(np.median([p[i] for p in polls])) / 1000 for i in range(len(provs))]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sim(spec: Spec, live: Live) -> DayResult:
    """The same network and arrivals in the simulator, with the path model measured live."""
    provs = spec.providers()
    n, m = len(provs), len(live.sent)
    end = max(live.sent) + 60
    sc = dataclasses.replace(
        Scenario(), name="sim-live", seed=spec.seed, providers=n, requests=m, hours=end / 3600,
        gateways={"us-east": "washington"},
        churn=Churn(step_s=end),
        demand=Demand(region_share={"us-east": 1.0}, mix={"chat_stream": 1.0}, max_output_tokens=MAX_TOKENS,
                      chat_output_median=spec.words_median, bursts=()),
        cheaters=Cheaters(share=1 / n, strategies={"smaller_model": 1.0}, detect={"smaller_model": 1.0},
                          honest_false_positive=0.0),
        # The live router looks at a random 6 of the 12 for each request, refreshes its prior every 2 s
        # and at once after a provider's first answer in a pool this small, and ranks answers at their
        # typical length (routing/priors.py); the raw checker answers at once; nothing is hedged
        # (streams) and there is no batch work.
        policies=Policies(prior_refresh_s=2.0, prior_soon_s=PRIOR_AT_ONCE_S, audit_delay_s=0.05,
                          hedge_percentile=0.0, batch_tick_s=end, expected_output_known=True,
                          route_sample=ROUTE_SAMPLE))
    tokens_s = np.array([1 / (spt + live.per_token_s) for _, _, spt in provs])
    strategy = np.zeros(n, dtype=np.int8)
    strategy[spec.cheater] = STRATEGIES.index("smaller_model")
    # The simulator serves a cheated answer twice as fast (a smaller model); the live cheater is an
    # honest echo whose audits fail, so its simulated speed is halved to give the same service time.
    tokens_s[spec.cheater] *= 0.5
    leave = np.full((1, n), np.inf)
    leave[0, spec.crash] = live.crash_t
    city = np.full(n, geo.city("washington"))
    ones = np.ones(n)
    words = np.array(live.words, dtype=np.int64)
    earth = Earth(
        sc, n, city, np.full(n, geo.REGIONS.index("us-east")), np.zeros(n, int), np.zeros(n, bool),
        ones * 1e9, tokens_s, ones * 1e3, np.full(n, CONCURRENCY), np.zeros(n, np.int64), np.zeros(n, np.int64),
        np.zeros(n, np.int64), np.zeros(n), ones * 0.1, ones * 100, ones * 10, strategy,
        np.array([live.rtt]), 1, np.ones((1, n), bool), leave,
        np.array([[k == spec.crash for k in range(n)]]),
        np.array(live.sent), np.zeros(m, np.int16), np.full(m, city[0], np.int32), np.full(m, STREAM, np.int8),
        words, words, np.full(m, live.overhead_s), gateways=("us-east",), gw_city=city[:1],
        service_sigma=live.sigma, straggler_p=0.0)
    day = Day(earth)
    # The router's view of each link moves as the gateway's did (it is also the link's delay here).
    for t, seen in zip(live.rtt_at, live.rtt_seen):
        day.eng.at(t, _set_rtts, day.rtt[0], seen)
    res = day.run()
    # The host's stalls (`host_stalls`) hold up every request open across one, by the stalled time
    # within its (so lengthened) span. The providers are not paused: the probe measured the client's
    # and the gateway's stalls only. (Pausing the whole simulation instead, a stall of every process,
    # put the simulated p99 20-80% above the live one in 3 of 5 runs: bench/README.md "sim_live".)
    stalls = host_stalls(live)
    lat = res.pool_latency
    for j in np.flatnonzero(~np.isnan(lat)).tolist():
        extra = 0.0
        for _ in range(4):  # the held-up span is longer, and may reach into the next stall
            extra = _stalled(stalls, live.sent[j], live.sent[j] + float(lat[j]) + extra)
        lat[j] += extra
    return res


def _set_rtts(rtt: list[float], seen: list[float]) -> None:
    for i, r in enumerate(seen):
        if not math.isnan(r):
            rtt[i] = r


def agreement(spec: Spec, live: Live, sim: DayResult | list[DayResult]) -> tuple[list[dict[str, object]], dict[str, float]]:
    """Rows for a table (p50, p99, each provider's share; live, sim, gap) and the gaps by name.

    Given several simulations (the same live inputs under different seeds), the simulated side is
    their ensemble: the median of their p50s and p99s, the mean of each provider's share. The live
    run is one draw of a random process; so is each simulation, and comparing one draw with one
    draw counts both draws' noise (a provider that wins or loses the early race for its region's
    work serves ~20% or ~0%, live and simulated alike)."""
    sims = sim if isinstance(sim, list) else [sim]
    skip = spec.calibration
    lat_l = np.array(live.latency[skip:])
    rows: list[dict[str, object]] = []
    gaps: dict[str, float] = {}

    def row(name: str, a: float, b: float, relative: bool = True) -> None:
        gap = abs(b - a) / a if relative and a else abs(b - a)
        rows.append({"measure": name, "live": round(a, 4), "sim": round(b, 4), "gap": round(gap, 4)})
        gaps[name] = gap

    lat_s = [s.pool_latency[skip:].astype(float) for s in sims]
    for q in (50, 99):
        row(f"p{q}_s", float(np.nanpercentile(lat_l, q)), float(np.median([np.nanpercentile(x, q) for x in lat_s])))
    row("failed_share", float(np.isnan(lat_l).mean()), float(np.mean([np.isnan(x).mean() for x in lat_s])),
        relative=False)
    n = len(spec.providers())
    share_l = _shares(np.array(live.provider[skip:]), n)
    share_s = np.mean([_shares(s.served_by[skip:], n) for s in sims], axis=0)
    for i, (region, _, spt) in enumerate(spec.providers()):
        tag = " (crashed)" if i == spec.crash else " (cheater)" if i == spec.cheater else ""
        row(f"share p{i} {region} {spt * 1000:g}ms/tok{tag}", float(share_l[i]), float(share_s[i]), relative=False)
    gaps["share_total_variation"] = float(np.abs(share_l - share_s).sum() / 2)
    return rows, gaps


def _shares(who: np.ndarray, n: int) -> np.ndarray:
    """Each provider's share of the requests served (failed ones, -1, left out)."""
    return np.bincount(who[who >= 0], minlength=n) / max(1, (who >= 0).sum())
