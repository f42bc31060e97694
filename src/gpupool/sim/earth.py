"""The internet simulator's world, built once and vectorised with numpy: providers, churn, demand.

    sc = load_bundled("small")
    world = build(sc)          # world.n providers, world.online[step, i], world.arrival[j], ...

Everything here is ground truth that the policies must learn (speeds, who cheats, when a
machine goes away); the run (`day.py`) shows the policies only what a gateway would see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpupool.sim import geo
from gpupool.sim.scenario import Scenario

KINDS = ("chat_stream", "chat", "embed", "batch")
STRATEGIES = ("honest", "smaller_model", "truncated", "random_vectors", "fraction", "sybil")
BURST_BIN_S = 60.0


@dataclass
class Earth:
    sc: Scenario
    n: int
    city: np.ndarray  # per provider
    region: np.ndarray
    tier: np.ndarray
    consumer: np.ndarray
    prefill: np.ndarray
    decode: np.ndarray
    embed: np.ndarray
    conc: np.ndarray
    price_in: np.ndarray
    price_out: np.ndarray
    price_embed: np.ndarray
    claim: np.ndarray  # 0 no claim, else the claimed factor of its true speed
    kwh_usd: np.ndarray
    watts_busy: np.ndarray
    watts_idle: np.ndarray
    strategy: np.ndarray  # index into STRATEGIES
    gw_rtt: np.ndarray  # (gateways, providers) seconds, with the last mile
    steps: int
    online: np.ndarray  # (steps, providers) bool: online at the start of the step
    leave_at: np.ndarray  # (steps, providers) float: leaves during this step at that time, else inf
    crash: np.ndarray  # (steps, providers) bool: that departure is a crash
    # Requests, sorted by arrival.
    arrival: np.ndarray
    req_gw: np.ndarray  # gateway index (the user's region)
    req_city: np.ndarray
    kind: np.ndarray  # index into KINDS
    tokens_in: np.ndarray
    tokens_out: np.ndarray  # true output length; embeddings: number of items
    user_gw_rtt: np.ndarray
    gateways: tuple[str, ...]
    gw_city: np.ndarray
    # Each answer's service time: the provider's speed times lognormal noise of this sigma, and
    # `straggler_x` times longer with probability `straggler_p` (a pause: thermal, swap, GC).
    service_sigma: float = 0.2
    straggler_p: float = 0.01
    straggler_x: float = 4.0


def build(sc: Scenario) -> Earth:
    rng = np.random.default_rng(sc.seed)
    n = sc.providers
    gateways = tuple(sc.gateways)
    gw_city = np.array([geo.city(sc.gateways[g]) for g in gateways])
    city = rng.choice(len(geo.CITIES), size=n, p=geo.POP / geo.POP.sum())
    tiers = sc.tiers
    tier = rng.choice(len(tiers), size=n, p=np.array([t.share for t in tiers]) / sum(t.share for t in tiers))
    consumer = np.array([t.kind == "consumer" for t in tiers])[tier]
    f = np.exp(rng.normal(0, 0.15, n))  # per-machine spread within a tier
    col = lambda attr: np.array([getattr(t, attr) for t in tiers], dtype=float)[tier]  # noqa: E731
    prefill, decode, embed = col("prefill_tps") * f, col("decode_tps") * f, col("embed_items_per_s") * f
    kwh = geo.KWH[city].copy()
    for r, price in sc.electricity_usd_per_kwh.items():
        kwh[geo.CITY_REGION[city] == geo.REGIONS.index(r)] = price
    kwh[~consumer] = sc.market.datacenter_kwh_usd
    m = sc.market
    if m.price_policy == "electricity":
        # The owner's electricity per 1M output tokens at full load, times a markup.
        per_m = col("watts_busy") / 1000 * kwh / (decode * col("concurrency") * 3600) * 1e6 / m.usd_per_credit * 1e6
        price_out = np.maximum(per_m * m.markup, m.floor_out)
    else:
        price_out = col("price_out") * rng.uniform(m.spread[0], m.spread[1], n)
    price_out = price_out.astype(np.int64)
    u = rng.random(n)
    claim = np.where(u < 0.6, rng.uniform(0.9, 1.1, n), 0.0)
    strategy = _cheaters(sc, rng, n)
    last_mile = np.minimum(np.exp(rng.normal(np.log(sc.last_mile_ms[0] / 1000), sc.last_mile_ms[1], n)), 0.2)
    last_mile[~consumer] = 0.002
    rtt = geo.city_rtt_s()
    gw_rtt = rtt[gw_city][:, city] + last_mile[None, :]
    online, leave_at, crash, steps = _churn(sc, rng, city, consumer, strategy)
    e = Earth(sc, n, city, geo.CITY_REGION[city], tier, consumer, prefill, decode, embed,
              col("concurrency").astype(int), price_out // 4, price_out, price_out // 20, claim, kwh,
              col("watts_busy"), col("watts_idle"), strategy, gw_rtt, steps, online, leave_at, crash,
              *_demand(sc, rng, gateways, gw_city), gateways=gateways, gw_city=gw_city)
    return e


def _cheaters(sc: Scenario, rng: np.random.Generator, n: int) -> np.ndarray:
    strategy = np.zeros(n, dtype=np.int8)
    k = int(round(n * sc.cheaters.share))
    if k == 0:
        return strategy
    who = rng.choice(n, size=k, replace=False)
    names = list(sc.cheaters.strategies)
    w = np.array([sc.cheaters.strategies[s] for s in names])
    strategy[who] = np.array([STRATEGIES.index(s) for s in names])[rng.choice(len(names), size=k, p=w / w.sum())]
    return strategy


def _churn(sc: Scenario, rng: np.random.Generator, city: np.ndarray, consumer: np.ndarray,
           strategy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Sessions as a two-state chain per provider and step, aimed at the hour's online share."""
    ch = sc.churn
    steps = int(np.ceil(sc.hours * 3600 / ch.step_s))
    n = len(city)
    curve = np.array(ch.consumer_online)
    online = np.zeros((steps, n), dtype=bool)
    leave_at = np.full((steps, n), np.inf, dtype=np.float64)
    crash = np.zeros((steps, n), dtype=bool)
    utc = geo.UTC[city]
    q_off_c = min(1.0, ch.step_s / (ch.mean_session_h * 3600))
    q_off_d = min(1.0, ch.step_s / (48 * 3600))
    p0 = np.where(consumer, curve[((0 + utc) % 24).astype(int)], ch.datacenter_online)
    state = rng.random(n) < p0
    sybil = strategy == STRATEGIES.index("sybil")
    # A Sybil group joins together (one hour per group of `sybil_group`) and then stays online.
    sybil_idx = np.flatnonzero(sybil)
    join_h = np.full(n, -1.0)
    for g in range(0, len(sybil_idx), max(1, sc.cheaters.sybil_group)):
        join_h[sybil_idx[g:g + sc.cheaters.sybil_group]] = rng.uniform(0, sc.hours * 0.5)
    for k in range(steps):
        t0 = k * ch.step_s
        h_next = ((t0 + ch.step_s) / 3600 + utc) % 24
        p = np.where(consumer, curve[h_next.astype(int)], ch.datacenter_online)
        q_off = np.where(consumer, q_off_c, q_off_d)
        q_on = np.minimum(1.0, q_off * p / np.maximum(1 - p, 1e-3))
        online[k] = state
        u = rng.random(n)
        leaving = state & (u < q_off)
        joining = ~state & (u < q_on)
        leave_at[k, leaving] = t0 + rng.random(int(leaving.sum())) * ch.step_s
        crash[k, leaving] = rng.random(int(leaving.sum())) < ch.crash_share
        state = (state & ~leaving) | joining
        joined = sybil & (join_h * 3600 <= t0)
        online[k, sybil] = joined[sybil]
        leave_at[k, sybil] = np.inf
        state[sybil] = (join_h[sybil] * 3600 <= t0 + ch.step_s)
    return online, leave_at, crash, steps


def _demand(sc: Scenario, rng: np.random.Generator, gateways: tuple[str, ...],
            gw_city: np.ndarray) -> tuple[np.ndarray, ...]:
    d = sc.demand
    bins = int(np.ceil(sc.hours * 3600 / BURST_BIN_S))
    t = np.arange(bins) * BURST_BIN_S
    rate = np.zeros((len(gateways), bins))
    daily = np.array(d.daily)
    for g, name in enumerate(gateways):
        local = ((t / 3600 + geo.UTC[gw_city[g]]) % 24).astype(int)
        rate[g] = d.region_share.get(name, 0.0) * daily[local]
    for b in d.bursts:
        g = gateways.index(b.region)
        on = (t >= b.at_h * 3600) & (t < b.at_h * 3600 + b.minutes * 60)
        rate[g, on] *= b.factor
    p = rate.ravel() / rate.sum()
    counts = rng.multinomial(sc.requests, p)
    cell = np.repeat(np.arange(p.size), counts)
    gw = (cell // bins).astype(np.int16)
    arrival = (cell % bins) * BURST_BIN_S + rng.random(sc.requests) * BURST_BIN_S
    order = np.argsort(arrival, kind="stable")
    arrival, gw = arrival[order], gw[order]
    # The user's city: a city of the gateway's region, by population.
    user_city = np.empty(sc.requests, dtype=np.int32)
    rtt = geo.city_rtt_s()
    for g, name in enumerate(gateways):
        cities = np.flatnonzero(geo.CITY_REGION == geo.REGIONS.index(name))
        mask = gw == g
        pw = geo.POP[cities] / geo.POP[cities].sum()
        user_city[mask] = rng.choice(cities, size=int(mask.sum()), p=pw)
    user_gw_rtt = rtt[user_city, gw_city[gw]] + np.minimum(np.exp(rng.normal(np.log(0.015), 0.5, sc.requests)), 0.2)
    mix = np.array([d.mix.get(k, 0.0) for k in KINDS])
    kind = rng.choice(len(KINDS), size=sc.requests, p=mix / mix.sum()).astype(np.int8)
    t_in = np.clip(np.round(d.chat_input_median * np.exp(rng.normal(0, 0.8, sc.requests))), 16, 8000)
    t_out = np.clip(np.round(d.chat_output_median * np.exp(rng.normal(0, 0.7, sc.requests))), 1, d.max_output_tokens)
    embed = kind == KINDS.index("embed")
    items = np.clip(np.round(d.embed_items_median * np.exp(rng.normal(0, 0.8, sc.requests))), 1, 256)
    t_out = np.where(embed, items, t_out)
    t_in = np.where(embed, items * d.embed_tokens_per_item, t_in)
    return (arrival, gw, user_city, kind, t_in.astype(np.int64), t_out.astype(np.int64), user_gw_rtt)
