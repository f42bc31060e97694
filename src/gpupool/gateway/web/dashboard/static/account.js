// Account page: the pasted key (sessionStorage) as a Bearer token to /v1/account and /v1/batches.
"use strict";

const KEY_SLOT = "gpupool.key";
let lastId = null;

function auth() { return {headers: {Authorization: "Bearer " + sessionStorage.getItem(KEY_SLOT)}}; }

function chargeRow(c) {
  const provider = c.provider || "";
  const who = provider.startsWith("fallback:") ? el("span", {}, provider)
    : el("a", {href: "/dashboard/provider.html?id=" + encodeURIComponent(provider), class: "mono",
               title: provider}, shortId(provider));
  return el("tr", {"data-request": c.request_id},
    el("td", {}, when(c.at)), el("td", {class: "mono", title: c.request_id}, shortId(c.request_id)),
    el("td", {class: "mono"}, c.model), el("td", {}, who), el("td", {}, c.status),
    el("td", {class: "num"}, c.prompt_tokens + " / " + c.completion_tokens), creditsEl("td", c.cost, {class: "num"}));
}

function explainHolds(a) {
  const parts = [];
  if (a.held > 0) {
    parts.push(`${credits(a.held)} is reserved by this gateway as a tab: it is taken from your balance in one ` +
      "ledger write so that requests can start at once. Each request holds the most it may cost from the tab " +
      "and is charged what its provider's signed receipt says; the unused rest of the tab returns to your " +
      "balance when you stop sending requests for a while.");
  } else {
    parts.push("Nothing is held now: no tab is open for this account on this gateway.");
  }
  if (a.unsettled_charges > 0) {
    parts.push(`${credits(a.unsettled_charges)} was charged for finished requests and is being settled ` +
      "(providers sign their receipts in batches, within a second or so).");
  }
  setText("holds-explained", parts.join(" "));
  // Newer gateways may itemise holds (reason per hold): list them as given.
  const holds = Array.isArray(a.holds) ? a.holds : [];
  document.getElementById("holds").replaceChildren(...holds.map((h) =>
    el("li", {"data-ucr": h.amount_ucr ?? h.amount ?? 0},
       credits(h.amount_ucr ?? h.amount ?? 0) + (h.kind ? " (" + h.kind + ")" : "") + (h.reason ? ": " + h.reason : ""))));
}

async function loadAccount(more) {
  const a = await api("/v1/account?limit=20" + (more && lastId ? "&after=" + encodeURIComponent(lastId) : ""), auth());
  document.getElementById("account").hidden = false;
  setText("account-name", a.account);
  for (const [id, v] of [["balance", a.balance], ["held", a.held], ["unsettled", a.unsettled_charges]]) {
    const n = document.getElementById(id);
    n.textContent = credits(v);
    n.dataset.ucr = String(v);
    n.title = (v ?? 0).toLocaleString("en-US") + " µcr";
  }
  setText("in-flight", a.in_flight);
  explainHolds(a);
  // The account's own ledger entries, as the gateway describes them (newer gateways say what each is).
  const moves = Array.isArray(a.recent) ? a.recent.filter((m) => m && typeof m.delta === "number") : [];
  document.getElementById("movements-section").hidden = moves.length === 0;
  fillTable(document.querySelector("#movements tbody"), moves.map((m) => el("tr", {"data-seq": m.seq},
    el("td", {}, when(m.at)), el("td", {}, m.description || m.kind || ""), creditsEl("td", m.delta, {class: "num"}))));
  const rows = (a.recent_charges || []).map(chargeRow);
  const body = document.querySelector("#charges tbody");
  if (more) body.append(...rows); else fillTable(body, rows);
  document.getElementById("charges-empty").hidden = body.children.length > 0;
  lastId = a.last_id;
  document.getElementById("more").hidden = !a.has_more;
  document.body.dataset.accountLoaded = "1";
  stamp();
}

async function loadBatches() {
  let body;
  try {
    body = await api("/v1/batches?limit=20", auth());
  } catch (e) {
    if (e.status === 404) { document.getElementById("batches-section").hidden = true; return; }
    throw e;
  }
  document.getElementById("batches-section").hidden = false;
  const rows = (body.data || []).map((b) => {
    const c = b.request_counts || {total: 0, completed: 0, failed: 0};
    const pct = c.total ? Math.round(100 * (c.completed + c.failed) / c.total) : 0;
    return el("tr", {"data-batch": b.id}, el("td", {class: "mono"}, b.id), el("td", {}, b.status),
      el("td", {class: "mono"}, b.endpoint || ""), el("td", {class: "num"}, `${c.completed} / ${c.failed} / ${c.total}`),
      el("td", {}, el("progress", {max: 100, value: pct}), " " + pct + "%"), el("td", {}, when(b.created_at)));
  });
  fillTable(document.querySelector("#batches tbody"), rows);
  document.getElementById("batches-empty").hidden = rows.length > 0;
}

async function show() {
  const err = document.getElementById("key-error");
  err.hidden = true;
  try {
    await loadAccount(false);
    await loadBatches();
  } catch (e) {
    document.getElementById("account").hidden = true;
    err.textContent = e.message;
    err.hidden = false;
  }
}

header("account");
document.getElementById("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = document.getElementById("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_SLOT, key);
  document.getElementById("key").value = "";
  show();
});
document.getElementById("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_SLOT);
  document.getElementById("account").hidden = true;
});
document.getElementById("more").addEventListener("click", () => loadAccount(true).catch((e) => console.warn(e)));
if (sessionStorage.getItem(KEY_SLOT)) {
  show();
  setInterval(() => { if (!document.hidden && sessionStorage.getItem(KEY_SLOT)) loadAccount(false).catch(() => {}); },
              10000);
}
