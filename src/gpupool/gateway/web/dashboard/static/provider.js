// Provider page (?id=NODE_ID): earnings and reputation (public), and its live entry if connected.
"use strict";

const nodeId = new URLSearchParams(location.search).get("id") || "";

function setCredits(id, ucr) {
  const n = document.getElementById(id);
  n.textContent = credits(ucr);
  n.dataset.ucr = String(ucr);
  n.title = (ucr ?? 0).toLocaleString("en-US") + " µcr";
}

async function refresh() {
  const e = await api("/v1/providers/" + encodeURIComponent(nodeId) + "/earnings");
  setCredits("earn-held", e.held);
  setCredits("earn-free", e.withdrawable);
  setCredits("earn-stake", e.staked);
  setText("window-explained", `Earnings stay held for ${Math.round(e.audit_window_s)} s after each request ` +
    "(the audit window); with no failed audit they then become withdrawable.");
  try {
    const r = await api("/v1/providers/" + encodeURIComponent(nodeId) + "/reputation");
    const rec = r.record;  // signed by this gateway: counts, not the score (that is on the live entry)
    setText("audits", (rec.audits - rec.audit_failures) + " / " + rec.audit_failures);
  } catch (err) {
    if (err.status !== 404) throw err;
  }
  try {
    const p = await api("/v1/providers/" + encodeURIComponent(nodeId));
    document.getElementById("details").hidden = false;
    setText("status", "connected to this gateway");
    setText("region", p.region);
    const st = document.getElementById("state");
    st.textContent = p.state;
    st.className = "state-" + p.state;
    setText("load", p.load.in_flight + " / " + p.load.max_concurrency + " requests");
    setText("rtt", p.rtt_ms === null ? "–" : num(p.rtt_ms, 1) + " ms");
    setText("gflops", num(p.verified_gflops, 1));
    setText("gpus", p.gpus.length ? p.gpus.map((g) => `${g.name} (${Math.round(g.memory_mb / 1024)} GiB)`).join(", ")
                                  : "none announced");
    setText("reputation", num(p.reputation, 3));
    document.getElementById("models-section").hidden = false;
    fillTable(document.querySelector("#models tbody"), p.models.map((m) => el("tr", {"data-model": m.name},
      el("td", {class: "mono"}, m.name), el("td", {}, m.task), el("td", {class: "num"}, price(m.price_in)),
      el("td", {class: "num"}, m.task === "embeddings" ? "–" : price(m.price_out)),
      el("td", {class: "num"}, m.measured_speed === null ? "–" : num(m.measured_speed, 1) + " " + m.speed_unit))));
  } catch (err) {
    if (err.status !== 404) throw err;
    document.getElementById("details").hidden = true;
    setText("status", "not connected to this gateway now");
  }
  document.body.dataset.providerLoaded = "1";
  stamp();
}

header("provider");
setText("node-id", nodeId);
if (!nodeId) setText("status", "no provider id: open this page from the providers table");
else every(5000, refresh);
