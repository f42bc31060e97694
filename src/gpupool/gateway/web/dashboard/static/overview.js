// Overview page: map and table from /v1/providers, charts from /v1/stats, market from /v1/market.
"use strict";

async function allProviders() {
  const out = [];
  let after = "";
  for (let page = 0; page < 100; page++) {  // 100 pages of 100: far more than any gateway holds
    const body = await api("/v1/providers?limit=100" + (after ? "&after=" + encodeURIComponent(after) : ""));
    out.push(...body.data);
    if (!body.has_more || !body.last_id) break;
    after = body.last_id;
  }
  return out;
}

function providerRow(p) {
  const models = p.models.map((m) => el("div", {},
    el("span", {class: "mono"}, m.name), " ", el("span", {class: "muted"},
      m.task === "embeddings" ? price(m.price_in) : price(m.price_in) + " / " + price(m.price_out))));
  const speeds = p.models.filter((m) => m.measured_speed !== null)
    .map((m) => el("div", {}, num(m.measured_speed, 1) + " " + m.speed_unit));
  return el("tr", {"data-id": p.id},
    el("td", {}, el("a", {href: "/dashboard/provider.html?id=" + encodeURIComponent(p.id), class: "mono",
                          title: p.id}, shortId(p.id))),
    el("td", {}, p.region),
    el("td", {}, models),
    el("td", {class: "num"}, p.load.in_flight + " / " + p.load.max_concurrency),
    el("td", {class: "num"}, num(p.rtt_ms, 1)),
    el("td", {class: "num"}, speeds.length ? speeds : "–"),
    el("td", {class: "num"}, num(p.verified_gflops, 1)),
    el("td", {class: "num"}, num(p.reputation, 3)),
    el("td", {class: "num"}, p.audits.passed + " / " + p.audits.failed),
    el("td", {class: "state-" + p.state}, p.state));
}

async function refreshProviders() {
  const providers = await allProviders();
  fillTable(document.querySelector("#providers tbody"), providers.map(providerRow));
  document.getElementById("providers-empty").hidden = providers.length > 0;
  await drawMap(document.getElementById("map"), document.getElementById("elsewhere"), providers);
  document.body.dataset.providersLoaded = String(providers.length);
  stamp();
}

async function refreshStats() {
  const s = await api("/v1/stats?window_s=300");
  setText("n-providers", s.providers.serving);
  setText("n-checkers", s.checkers);
  setText("n-rps", num(s.totals.requests_per_s, 2));
  setText("n-p95", s.totals.p95_latency_ms === null ? "–" : num(s.totals.p95_latency_ms, 0) + " ms");
  lineChart(document.getElementById("chart-rps"),
            [{name: "requests/s", points: s.series.map((b) => [b.t, b.requests_per_s])}], {unit: "req/s"});
  legend(document.getElementById("legend-rps"), ["requests/s"]);
  lineChart(document.getElementById("chart-latency"), [
    {name: "p50", points: s.series.map((b) => [b.t, b.p50_latency_ms])},
    {name: "p95", points: s.series.map((b) => [b.t, b.p95_latency_ms])}], {unit: "ms"});
  legend(document.getElementById("legend-latency"), ["p50", "p95"]);
  fillTable(document.querySelector("#traffic tbody"), s.models.map((m) => el("tr", {"data-model": m.model},
    el("td", {class: "mono"}, m.model || "(none)"), el("td", {class: "num"}, m.requests),
    el("td", {class: "num"}, m.errors), el("td", {class: "num"}, num(m.requests_per_s, 3)),
    el("td", {class: "num"}, num(m.p50_latency_ms, 1)), el("td", {class: "num"}, num(m.p95_latency_ms, 1)),
    el("td", {class: "num"}, num(m.p50_ttft_ms, 1)))));
  document.body.dataset.statsRequests = String(s.totals.requests);
}

async function refreshMarket() {
  const m = await api("/v1/market");
  setText("n-models", m.data.length);
  setText("fee", (m.fee_bps / 100).toFixed(2) + "%");
  fillTable(document.querySelector("#market tbody"), m.data.map((r) => el("tr", {"data-model": r.model},
    el("td", {class: "mono"}, r.model), el("td", {}, r.task), el("td", {class: "num"}, r.providers),
    el("td", {}, r.regions.join(", ")), el("td", {class: "num"}, priceRange(r.price_in)),
    el("td", {class: "num"}, priceRange(r.price_out)),
    el("td", {class: "num"}, r.capacity.in_flight + " / " + r.capacity.slots),
    el("td", {class: "num"}, r.measured_speed ? num(r.measured_speed.median, 1) + " " + r.measured_speed.unit
                                               : "–"))));
}

header("overview");
every(5000, refreshProviders);
every(3000, refreshStats);
every(10000, refreshMarket);
