// World map of providers by region: Natural Earth land (vendor/land-110m.json, world-atlas
// 2.0.2) decoded by topojson-client, drawn with a plain equirectangular projection.
"use strict";

// Region names as providers announce them (free-form; devnet uses these) -> [lat, lon].
// A name not here is placed by the offer's rounded location if it has one, else listed
// under "elsewhere". A trailing number ("eu-west-2") is ignored.
const REGION_COORDS = {
  "eu-west": [53.3, -6.3], "eu-central": [50.1, 8.7], "eu-north": [59.3, 18.1], "eu-south": [45.5, 9.2],
  "uk-south": [51.5, -0.1], "us-east": [39.0, -77.5], "us-west": [45.6, -121.2], "us-central": [41.9, -93.6],
  "us-south": [32.8, -96.8], "ca-central": [45.5, -73.6], "sa-east": [-23.5, -46.6], "ap-south": [19.1, 72.9],
  "ap-east": [22.3, 114.2], "ap-northeast": [35.7, 139.7], "ap-southeast": [1.35, 103.8],
  "au-east": [-33.9, 151.2], "au-southeast": [-37.8, 145.0], "me-central": [25.2, 55.3], "me-south": [26.1, 50.6],
  "af-south": [-33.9, 18.4], "cn-north": [39.9, 116.4], "jp-east": [35.7, 139.7], "kr-central": [37.6, 127.0],
};

const MAP_W = 960, MAP_H = 480;
const project = (lon, lat) => [(lon + 180) / 360 * MAP_W, (90 - lat) / 180 * MAP_H];

function regionCoords(region, location) {
  const key = String(region).toLowerCase().replace(/-\d+$/, "");
  if (REGION_COORDS[key]) return REGION_COORDS[key];
  if (location) return [location.latitude, location.longitude];
  return null;
}

// SVG path for GeoJSON (Multi)Polygon rings; a ring crossing the antimeridian is split
// there instead of drawing a line across the whole map.
function ringsPath(geometry) {
  const polys = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
  let d = "";
  for (const poly of polys) for (const ring of poly) {
    let prev = null;
    for (const [lon, lat] of ring) {
      const [x, y] = project(lon, lat);
      d += (prev === null || Math.abs(lon - prev) > 180 ? "M" : "L") + x.toFixed(1) + "," + y.toFixed(1);
      prev = lon;
    }
    d += "Z";
  }
  return d;
}

let landPath = null;
async function loadLand() {
  if (landPath === null) {
    const topo = await api("/dashboard/vendor/land-110m.json");
    const land = topojson.feature(topo, topo.objects.land);
    landPath = land.features ? land.features.map((f) => ringsPath(f.geometry)).join("")
                             : ringsPath(land.geometry);
  }
  return landPath;
}

// Draw `providers` (the /v1/providers entries) on `svg`; the unplaceable ones go to `elsewhere`.
async function drawMap(svg, elsewhere, providers) {
  const NS = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs) => { const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
  svg.setAttribute("viewBox", `0 0 ${MAP_W} ${MAP_H}`);
  const d = await loadLand();
  svg.replaceChildren(mk("path", {class: "land", d}));
  const groups = new Map(), lost = [];
  for (const p of providers) {
    const at = regionCoords(p.region, p.location);
    if (!at) { lost.push(p); continue; }
    const key = at.join(",");
    if (!groups.has(key)) groups.set(key, {at, regions: new Set(), ids: []});
    groups.get(key).regions.add(p.region);
    groups.get(key).ids.push(p.id);
  }
  for (const g of groups.values()) {
    const [x, y] = project(g.at[1], g.at[0]);
    const regions = [...g.regions].sort().join(", ");
    const marker = mk("g", {class: "marker", "data-region": regions, "data-ids": g.ids.join(" ")});
    marker.append(mk("circle", {cx: x, cy: y, r: 5 + 3 * Math.sqrt(g.ids.length)}));
    const label = mk("text", {x: x + 10, y: y + 4});
    label.textContent = `${regions} (${g.ids.length})`;
    const title = mk("title", {});
    title.textContent = `${regions}: ${g.ids.length} provider(s)`;
    marker.append(label, title);
    svg.append(marker);
  }
  elsewhere.replaceChildren(...lost.map((p) =>
    el("li", {"data-id": p.id}, el("a", {href: "/dashboard/provider.html?id=" + encodeURIComponent(p.id)},
                                    shortId(p.id)), " — " + p.region)));
  elsewhere.parentElement.hidden = lost.length === 0;
}
