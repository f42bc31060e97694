"""What a simulated day answers: `summary.json` and PNG plots (matplotlib, the `sim` extra).

    summary = summarize(earth, result)        # a dict, written as DIR/summary.json
    paths = plot(earth, result, out_dir)      # DIR/*.png; needs matplotlib
    print(compare_text(a, b))                 # two summaries side by side
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gpupool.sim.day import BATCH, DayResult
from gpupool.sim.earth import Earth

SYSTEMS = ("pool", "cloud", "hybrid")


def _lat(res: DayResult, system: str) -> np.ndarray:
    return {"pool": res.pool_latency, "cloud": res.cloud_latency, "hybrid": res.hybrid_latency}[system]


def summarize(earth: Earth, res: DayResult) -> dict[str, Any]:
    interactive = earth.kind != BATCH
    chat_tok = max(res.tokens["chat"], 1)
    embed_items = max(res.tokens["embed"], 1)
    out: dict[str, Any] = {
        "scenario": earth.sc.name, "providers": earth.n, "requests": int(earth.sc.requests),
        "hours": earth.sc.hours, "wall_s": round(res.wall_s, 1),
    }
    cost = {
        "pool": (res.pool_charge_usd["chat"], res.pool_charge_usd["embed"]),
        "cloud": (res.cloud_cost_usd["chat"], res.cloud_cost_usd["embed"]),
        "hybrid": (res.pool_charge_usd["chat"] + res.lane_charge_usd["chat"],
                   res.pool_charge_usd["embed"] + res.lane_charge_usd["embed"]),
    }
    lane_tok = float(res.fallback.sum())
    for s in SYSTEMS:
        lat = _lat(res, s)[interactive]
        ok = lat[~np.isnan(lat)]
        chat_c, emb_c = cost[s]
        # The hybrid's tokens include the lane's; approximate them by the pool's mean per request.
        scale = 1.0 + (lane_tok / max(interactive.sum() - lane_tok, 1) if s == "hybrid" else 0.0)
        out[s] = {
            "p50_s": round(float(np.percentile(ok, 50)), 3) if ok.size else None,
            "p99_s": round(float(np.percentile(ok, 99)), 3) if ok.size else None,
            "cost_per_mtok_usd": round(chat_c / (chat_tok * scale) * 1e6, 4),
            "cost_per_1k_embeddings_usd": round(emb_c / (embed_items * scale) * 1e3, 5),
            "failed_share": round(1.0 - ok.size / max(lat.size, 1), 5),
        }
    trust = res.trust
    cheaters = trust.cheater_identities
    caught = sum(1 for _, _, c in trust.suspensions if c)
    margin = (res.earnings_usd - res.electricity_usd) * 24.0 / earth.sc.hours
    out.update({
        "fallback_share": round(float(res.fallback[interactive].mean()), 5),
        "owner_margin_median_usd_per_day": round(float(np.median(margin)), 3),
        "owner_earnings_median_usd_per_day": round(float(np.median(res.earnings_usd * 24.0 / earth.sc.hours)), 3),
        "owner_electricity_median_usd_per_day": round(float(np.median(res.electricity_usd * 24 / earth.sc.hours)), 3),
        "cheaters_caught_share": round(caught / cheaters, 4) if cheaters else None,
        "cheater_identities": cheaters,
        "honest_suspended": sum(1 for _, _, c in trust.suspensions if not c),
        "continued_streams": res.streams["continued"],
        "broken_streams": res.streams["broken"],
        "failed_after_break": res.streams["failed_after_break"],
        "batch": dict(res.batch),
        "audits": trust.audits,
        "hedges": res.counts.get("hedges", 0),
        "utilisation": round(float(res.util_busy.sum() / max(res.util_online.sum(), 1.0)), 4),
    })
    return out


def write_summary(summary: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


def compare_text(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """Two summaries side by side, one line per number."""
    rows: list[tuple[str, Any, Any]] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        for k in list(x) + [k for k in (y or {}) if k not in x]:
            xv, yv = x.get(k) if isinstance(x, dict) else None, y.get(k) if isinstance(y, dict) else None
            if isinstance(xv, dict) or isinstance(yv, dict):
                walk(xv or {}, yv or {}, f"{prefix}{k}.")
            else:
                rows.append((prefix + k, xv, yv))

    walk(a, b, "")
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {name_a:>16}  {name_b:>16}"]
    for k, x, y in rows:
        mark = "" if x == y else "  *"
        lines.append(f"{k:<{width}}  {str(x):>16}  {str(y):>16}{mark}")
    return "\n".join(lines)


def plot(earth: Earth, res: DayResult, out: Path) -> list[Path]:
    """The PNGs of one run; see docs/simulation.md for what each shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    interactive = earth.kind != BATCH

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        paths.append(out / name)

    gws = earth.gateways
    cols = 4
    rows = (len(gws) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for g, name in enumerate(gws):
        ax = axes[g // cols][g % cols]
        mask = interactive & (earth.req_gw == g)
        for s in SYSTEMS:
            lat = _lat(res, s)[mask]
            lat = np.sort(lat[~np.isnan(lat)])
            if lat.size:
                ax.plot(lat, np.arange(1, lat.size + 1) / mask.sum(), label=s)
        ax.set_xscale("log")
        ax.set_title(f"users in {name}")
        ax.set_xlabel("latency (s)")
        ax.set_ylim(0, 1)
    axes[0][0].legend()
    save(fig, "latency_cdf_by_region.png")

    s = summarize(earth, res)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.bar(SYSTEMS, [s[x]["cost_per_mtok_usd"] for x in SYSTEMS], color=["C0", "C1", "C2"])
    a1.set_title("USD per 1M chat tokens")
    a2.bar(SYSTEMS, [s[x]["cost_per_1k_embeddings_usd"] for x in SYSTEMS], color=["C0", "C1", "C2"])
    a2.set_title("USD per 1k embeddings")
    save(fig, "cost.png")

    hours = np.floor(earth.arrival / 3600).astype(int)
    nh = int(hours.max()) + 1 if hours.size else 1
    fb = np.bincount(hours[interactive], weights=res.fallback[interactive], minlength=nh)
    tot = np.maximum(np.bincount(hours[interactive], minlength=nh), 1)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(nh), fb / tot, marker="o")
    ax.set_title(f"share served by the cloud fallback lane (day: {s['fallback_share']:.2%})")
    ax.set_xlabel("hour (UTC)")
    save(fig, "fallback_share.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    n = int(np.ceil(earth.sc.hours))
    busy = res.util_busy[:n] / np.maximum(res.util_online[:n], 1)
    ax.plot(np.arange(n) + 0.5, busy * 100, marker="o", color="C0", label="busy / online slots")
    ax.set_ylabel("utilisation (%)", color="C0")
    ax.set_ylim(0, None)
    ax2 = ax.twinx()
    online = earth.online.mean(axis=1)
    ax2.plot(np.arange(len(online)) * earth.sc.churn.step_s / 3600, online * 100, color="C1")
    ax2.set_ylabel("providers online (%)", color="C1")
    ax2.set_ylim(0, 100)
    ax.set_xlabel("hour (UTC)")
    ax.set_title("provider utilisation over the day")
    save(fig, "utilisation.png")

    margin = (res.earnings_usd - res.electricity_usd) * 24 / earth.sc.hours
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    a1.scatter(res.electricity_usd * 24 / earth.sc.hours, res.earnings_usd * 24 / earth.sc.hours, s=2, alpha=0.3)
    lim = float(max(res.electricity_usd.max(), 1e-6) * 24 / earth.sc.hours)
    a1.plot([0, lim], [0, lim], "k--", lw=1)
    a1.set_xlabel("electricity USD/day")
    a1.set_ylabel("earnings USD/day")
    a2.hist(margin, bins=60)
    a2.axvline(0, color="k", lw=1)
    a2.set_title(f"owner margin USD/day (median {np.median(margin):.2f})")
    save(fig, "owner_margin.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    sus = sorted(res.trust.suspensions)
    t = [x[0] / 3600 for x in sus]
    ax.step(t, np.cumsum([1 if x[2] else 0 for x in sus]), where="post", label="cheater identities suspended")
    ax.step(t, np.cumsum([0 if x[2] else 1 for x in sus]), where="post", label="honest providers suspended")
    ax.axhline(res.trust.cheater_identities, color="C0", ls=":", label="cheater identities")
    ax.set_xlabel("hour (UTC)")
    ax.legend()
    save(fig, "cheaters_caught.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(np.arange(len(res.stream_breaks_by_hour)), res.stream_breaks_by_hour)
    st = res.streams
    ax.set_title(f"streams broken by a provider leaving: {st['broken']} "
                 f"(continued {st['continued']}, failed {st['failed_after_break']})")
    ax.set_xlabel("hour (UTC)")
    save(fig, "churn_streams.png")
    return paths
