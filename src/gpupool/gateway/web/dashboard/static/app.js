// gpupool dashboard: helpers shared by every page (no framework, no build step).
// Everything a provider or client chose (region, model names) is inserted as text,
// never as HTML, so a hostile offer cannot inject markup into the page.
"use strict";

const UCR_PER_CREDIT = 1000000;

// GET (or other) a JSON API path; throws an Error with the OpenAI error message on failure.
async function api(path, options) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (_e) { body = null; }
  if (!r.ok) {
    const msg = body && body.error ? body.error.message : r.status + " " + r.statusText;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

// Build an element: el("td", {class: "num"}, "text", childNode, ...). Strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setText(id, value) { const n = document.getElementById(id); if (n) n.textContent = value; }

// µcr as credits with the exact µcr in a tooltip: "1.250000 cr".
function credits(ucr) {
  if (ucr === null || ucr === undefined) return "–";
  const neg = ucr < 0, v = Math.abs(ucr);
  const whole = Math.floor(v / UCR_PER_CREDIT), frac = String(v % UCR_PER_CREDIT).padStart(6, "0");
  return (neg ? "-" : "") + whole.toLocaleString("en-US") + "." + frac + " cr";
}
function creditsEl(tag, ucr, attrs) {
  return el(tag, Object.assign({title: (ucr ?? 0).toLocaleString("en-US") + " µcr", "data-ucr": ucr}, attrs || {}),
            credits(ucr));
}
function num(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits ?? 0); }
function shortId(id) { return id.length > 16 ? id.slice(0, 10) + "…" + id.slice(-4) : id; }
// A time as the API gives it (unix seconds or an ISO 8601 string) in UTC.
function when(ts) {
  if (ts === null || ts === undefined || ts === "") return "–";
  const d = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
  if (isNaN(d.getTime())) return String(ts);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}
// A price in µcr per 1M tokens as credits per 1M tokens.
function price(ucr) { return ucr ? (ucr / UCR_PER_CREDIT).toFixed(4) : "free"; }
function priceRange(r) {
  if (!r) return "–";
  return r.min === r.max ? price(r.min) : price(r.min) + "–" + price(r.max);
}

function fillTable(tbody, rows) { tbody.replaceChildren(...rows); }

// Header with navigation; `here` names the current page.
function header(here) {
  const links = [["/", "Overview", "overview"], ["/dashboard/account.html", "Account", "account"]];
  const nav = el("nav", {}, links.map(([href, label, id]) =>
    el("a", {href, class: id === here ? "here" : null}, label)));
  document.body.prepend(el("header", {}, el("h1", {}, "gpupool"), nav,
                           el("span", {class: "muted", id: "updated"}, "")));
}
function stamp() { setText("updated", "updated " + new Date().toLocaleTimeString()); }

// Poll `fn` every `ms`, skipping a turn while the tab is hidden.
function every(ms, fn) {
  const run = () => { if (!document.hidden) fn().catch((e) => console.warn(e)); };
  run();
  return setInterval(run, ms);
}

// A small SVG line chart: series = [{name, points: [[t, v|null], ...]}]. Nulls break the line.
function lineChart(svg, series, opts) {
  const W = 600, H = 180, L = 44, B = 20, T = 8, R = 8;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const NS = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs) => { const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
  const all = series.flatMap((s) => s.points);
  if (!all.length) return;
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  const vmax = Math.max(1e-9, ...all.map((p) => p[1] ?? 0)) * 1.1;
  const x = (t) => L + (W - L - R) * (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5);
  const y = (v) => H - B - (H - B - T) * (v / vmax);
  svg.append(mk("line", {class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}));
  svg.append(mk("line", {class: "axis", x1: L, y1: T, x2: L, y2: H - B}));
  for (const f of [0, 0.5, 1]) {
    const t = mk("text", {x: L - 4, y: y(vmax / 1.1 * f) + 3, "text-anchor": "end"});
    t.textContent = num(vmax / 1.1 * f, vmax < 10 ? 2 : 0);
    svg.append(t);
  }
  const t = mk("text", {x: W - R, y: H - 4, "text-anchor": "end"});
  t.textContent = (opts && opts.unit) || "";
  svg.append(t);
  series.forEach((s, i) => {
    let d = "", pen = false;
    for (const [tt, v] of s.points) {
      if (v === null || v === undefined) { pen = false; continue; }
      d += (pen ? "L" : "M") + x(tt).toFixed(1) + "," + y(v).toFixed(1);
      pen = true;
    }
    if (d) svg.append(mk("path", {d, class: "s" + i, "data-series": s.name}));
    // Dots too: a bucket with traffic between two empty ones is a lone point, not a line.
    for (const [tt, v] of s.points) {
      if (v !== null && v !== undefined && (v > 0 || (opts && opts.zeroDots))) {
        svg.append(mk("circle", {cx: x(tt).toFixed(1), cy: y(v).toFixed(1), r: 2, class: "s" + i}));
      }
    }
  });
}
function legend(node, names) {
  const colors = ["var(--accent)", "var(--warn)", "var(--good)"];
  node.replaceChildren(...names.map((n, i) => el("span", {}, el("i", {style: "background:" + colors[i]}), n)));
}
