"""The review page served at ``/``: one static HTML file with inline JS, no build step.

Every piece of stored or user text is put in the page with ``textContent`` (never ``innerHTML``), so a
label such as ``<script>`` shows as text. Crops are fetched with the token header and shown as blob URLs.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>samsearch</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#111;color:#ddd}
header{padding:8px 12px;background:#222;display:flex;gap:8px;flex-wrap:wrap;align-items:center}
input,button,select{font:inherit;background:#333;color:#eee;border:1px solid #555;padding:3px 6px}
main{display:flex;gap:12px;padding:12px}
section{flex:1;min-width:0}
.grid{display:flex;flex-wrap:wrap;gap:6px}
.tile{width:164px;background:#1c1c1c;border:2px solid #1c1c1c;cursor:pointer;position:relative}
.tile.selected{border-color:#4a9}
.tile.active{border-color:#e93}
.tile img{width:160px;height:160px;display:block}
.tile .cap{font-size:12px;padding:2px 4px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.tile input{position:absolute;top:4px;left:4px}
#status{color:#aaa} .err{color:#f77}
h2{font-size:15px;margin:4px 0 8px}
.cluster{margin-bottom:10px;border-top:1px solid #333;padding-top:6px}
#image-view img{max-width:100%;display:block;margin-bottom:6px}
#image-view li{font-size:12px}
.tile.liked{border-color:#5c5} .tile.unliked{border-color:#c55}
.tile .fb{position:absolute;top:4px;right:4px;display:flex;gap:2px}
.tile .fb button{padding:0 5px;font-size:12px}
</style></head><body>
<header>
 <b>samsearch</b>
 <input id="f-dataset" placeholder="dataset"><input id="f-label" placeholder="label">
 <input id="f-cluster" placeholder="cluster" size="6">
 <input id="f-min_score" placeholder="score &ge;" size="6" title="label score (the bank's cosine) at least">
 <input id="f-max_score" placeholder="score &le;" size="6" title="label score at most: the doubtful labels">
 <button id="apply">filter</button>
 <button id="prev">&larr;</button><span id="pageno"></span><button id="next">&rarr;</button>
 <span>|</span><input id="label-input" placeholder="label for selected"><button id="assign">assign label</button>
 <button id="unassign">clear manual label</button>
 <button id="clear-sel">clear selection</button><button id="show-clusters">clusters</button>
 <span>|</span><input id="text-query" placeholder="find by text: a red car" size="22">
 <button id="text-search">find</button>
 <span id="status"></span>
</header>
<main>
 <section><h2 id="grid-title">segments</h2><div id="grid" class="grid"></div></section>
 <section id="side"><h2 id="nb-title">click a segment to see its nearest neighbours</h2>
  <label><input type="checkbox" id="exclude-same"> other images only</label>
  <span id="fb-bar"> | mark hits + (like) / &minus; (unlike), then <button id="refine">refine</button>
   diversity <input id="diversity" type="number" min="0" max="1" step="0.1" value="0" size="3"></span>
  <button id="open-image" disabled>its image</button>
  <div id="neighbours" class="grid"></div><div id="clusters"></div><div id="image-view"></div></section>
</main>
<script>
"use strict";
const PAGE_SIZE = 48;
let offset = 0, selected = new Set(), token = sessionStorage.getItem("samsearch-token") || "";
const $ = (id) => document.getElementById(id);
function status(text, bad) { const s = $("status"); s.textContent = text; s.className = bad ? "err" : ""; }
async function api(path, body) {
  const opts = {headers: {}};
  if (token) opts.headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) { opts.method = "POST"; opts.headers["Content-Type"] = "application/json";
                            opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    const t = prompt("This server needs a token:");
    if (t) { token = t; sessionStorage.setItem("samsearch-token", t); return api(path, body); }
  }
  const ct = r.headers.get("content-type") || "";
  const data = ct.startsWith("application/json") ? await r.json() : await r.blob();
  if (!r.ok) throw new Error((data && data.error) || ("HTTP " + r.status));
  return data;
}
async function crop(img, id) {
  try { img.src = URL.createObjectURL(await api("/api/segments/" + encodeURIComponent(id) + "/crop.png"));
  } catch (e) { img.alt = "no image"; }
}
function tile(seg, caption, onclick) {
  const d = document.createElement("div"); d.className = "tile"; d.dataset.id = seg.segment_id;
  const img = document.createElement("img"); crop(img, seg.segment_id); d.appendChild(img);
  const cap = document.createElement("div"); cap.className = "cap"; cap.textContent = caption;
  cap.title = caption; d.appendChild(cap);
  d.addEventListener("click", onclick);
  return d;
}
function describe(s) {
  const score = s.label && s.label_score != null ? " " + s.label_score.toFixed(2) : "";
  return (s.label || s.annotation_category || "unlabeled") + score + " \\u00b7 " + s.dataset;
}
async function loadGrid(done) {
  const q = new URLSearchParams({limit: PAGE_SIZE, offset: offset});
  for (const f of ["dataset", "label", "cluster", "min_score", "max_score"]) {
    const v = $("f-" + f).value.trim(); if (v) q.set(f, v);
  }
  status("loading\\u2026");
  try {
    const data = await api("/api/segments?" + q);
    const grid = $("grid"); grid.replaceChildren();
    for (const s of data.segments) {
      const t = tile(s, describe(s), (ev) => {
        if (ev.shiftKey || ev.ctrlKey || ev.metaKey) { toggle(t, s.segment_id); } else { neighbours(t, s); }
      });
      const box = document.createElement("input"); box.type = "checkbox"; box.className = "sel";
      box.checked = selected.has(s.segment_id); if (box.checked) t.classList.add("selected");
      box.addEventListener("click", (ev) => { ev.stopPropagation(); toggle(t, s.segment_id); });
      t.appendChild(box); grid.appendChild(t);
    }
    $("pageno").textContent = "segments " + (offset + 1) + "\\u2013" + (offset + data.segments.length);
    $("next").disabled = data.segments.length < PAGE_SIZE; $("prev").disabled = offset === 0;
    status(data.segments.length ? (done || "") : "no segments match");
  } catch (e) { status(e.message, true); }
}
function toggle(t, id) {
  if (selected.has(id)) selected.delete(id); else selected.add(id);
  t.classList.toggle("selected", selected.has(id));
  const box = t.querySelector("input.sel"); if (box) box.checked = selected.has(id);
  status(selected.size + " selected");
}
async function neighbours(t, s) {
  for (const a of document.querySelectorAll(".tile.active")) a.classList.remove("active");
  t.classList.add("active");
  $("clusters").replaceChildren();
  $("nb-title").textContent = "nearest neighbours of " + s.segment_id + " (" + describe(s) + ")";
  feedback = {pos: new Set([s.segment_id]), neg: new Set()};
  current = s; $("open-image").disabled = false; $("image-view").replaceChildren();
  $("neighbours").replaceChildren();  // the old hits go at once: never mistaken for the new ones
  try {
    showHits(await api("/api/search", {segment_id: s.segment_id, k: 12,
                                       filters: {exclude_same_image: $("exclude-same").checked}}));
  } catch (e) { status(e.message, true); }
}
let feedback = {pos: new Set(), neg: new Set()}, current = null;
async function showImage() {
  if (!current) return;
  const view = $("image-view"); view.replaceChildren(); $("neighbours").replaceChildren();
  $("clusters").replaceChildren();
  try {
    const info = await api("/api/images/" + current.image_id);
    $("nb-title").textContent = "image " + info.image_id + " (" + info.dataset + "): "
      + info.segments.length + " segments";
    const img = document.createElement("img"); img.id = "overlay"; view.appendChild(img);
    img.src = URL.createObjectURL(await api("/api/images/" + info.image_id + "/overlay.png"));
    const list = document.createElement("ol");
    for (const seg of info.segments) {
      const li = document.createElement("li"); li.className = "image-seg"; li.dataset.id = seg.segment_id;
      li.textContent = (seg.label || seg.annotation_category || "unlabeled") + " \u00b7 area " + seg.area
        + (seg.segment_id === current.segment_id ? " (this one)" : "");
      li.style.cursor = "pointer"; li.title = "its nearest neighbours";
      li.addEventListener("click", () => neighbours(li, seg));
      list.appendChild(li);
    }
    view.appendChild(list);
  } catch (e) { status(e.message, true); }
}
function mark(n, id, like) {
  const mine = like ? feedback.pos : feedback.neg, other = like ? feedback.neg : feedback.pos;
  if (mine.has(id)) mine.delete(id); else { mine.add(id); other.delete(id); }
  n.classList.toggle("liked", feedback.pos.has(id)); n.classList.toggle("unliked", feedback.neg.has(id));
  status((feedback.pos.size - (current ? 1 : 0)) + " liked, " + feedback.neg.size + " unliked: refine to search again");
}
function showHits(res) {
  const out = $("neighbours"); out.replaceChildren();
  for (const h of res.hits) {
    const n = tile(h, "#" + h.rank + " " + h.score.toFixed(3) + " " + describe(h), () => neighbours(n, h));
    n.classList.add("hit"); n.dataset.score = h.score;
    const fb = document.createElement("div"); fb.className = "fb";
    for (const [cls, text, like] of [["like", "+", true], ["unlike", "\u2212", false]]) {
      const b = document.createElement("button"); b.className = cls; b.textContent = text;
      b.addEventListener("click", (ev) => { ev.stopPropagation(); mark(n, h.segment_id, like); });
      fb.appendChild(b);
    }
    n.appendChild(fb); out.appendChild(n);
  }
  if (!res.hits.length) status("no neighbours match");
}
async function textSearch() {
  const text = $("text-query").value.trim();
  if (!text) { status("type what to look for", true); return; }
  const filters = {exclude_same_image: false};
  for (const f of ["dataset", "label"]) { const v = $("f-" + f).value.trim(); if (v) filters[f] = v; }
  const c = $("f-cluster").value.trim(); if (c) filters.cluster = parseInt(c, 10);
  for (const a of document.querySelectorAll(".tile.active")) a.classList.remove("active");
  feedback = {pos: new Set(), neg: new Set()}; current = null; $("open-image").disabled = true;
  $("clusters").replaceChildren(); $("image-view").replaceChildren(); $("neighbours").replaceChildren();
  status("searching\u2026");
  try {
    const res = await api("/api/search", {text: text, k: 24, filters: filters});
    $("nb-title").textContent = "segments matching " + JSON.stringify(text) + " (space " + res.query.space + ")";
    showHits(res); if (res.hits.length) status(res.hits.length + " hits");
  } catch (e) { status(e.message, true); }
}
async function refine() {
  if (!feedback.pos.size) { status("click a segment first", true); return; }
  const diversity = Math.min(1, Math.max(0, parseFloat($("diversity").value) || 0));
  try {
    const res = await api("/api/search", {positive: [...feedback.pos], negative: [...feedback.neg], k: 12,
      diversity: diversity, filters: {exclude_same_image: $("exclude-same").checked}});
    $("nb-title").textContent = "refined: like " + feedback.pos.size + ", unlike " + feedback.neg.size
      + (diversity ? ", diversity " + diversity : "");
    showHits(res); status("refined (" + res.hits.length + " hits)");
  } catch (e) { status(e.message, true); }
}
async function assign() {
  const label = $("label-input").value.trim();
  if (!label || !selected.size) { status("select segments (checkbox) and type a label", true); return; }
  try {
    const r = await api("/api/labels", {segment_ids: [...selected], label: label});
    selected.clear(); loadGrid("labeled " + r.labeled + " segment(s) " + JSON.stringify(label));
  } catch (e) { status(e.message, true); }
}
async function unassign() {
  if (!selected.size) { status("select segments (checkbox) first", true); return; }
  try {
    const r = await api("/api/labels", {segment_ids: [...selected], label: null});
    selected.clear(); loadGrid("cleared the manual label of " + r.cleared + " segment(s)");
  } catch (e) { status(e.message, true); }
}
async function showClusters() {
  const box = $("clusters"); box.replaceChildren(); $("neighbours").replaceChildren();
  $("image-view").replaceChildren();
  try {
    const runs = (await api("/api/clusters")).runs;
    if (!runs.length) { $("nb-title").textContent = "no clustering runs yet (samsearch cluster)"; return; }
    const run = runs.find((r) => r.current) || runs[runs.length - 1];
    $("nb-title").textContent = "clusters of run " + run.name;
    const rep = await api("/api/clusters/" + encodeURIComponent(run.name) + "?top=6");
    for (const c of rep.clusters) {
      const div = document.createElement("div"); div.className = "cluster"; div.dataset.cluster = c.cluster;
      const head = document.createElement("div");
      head.textContent = (c.cluster < 0 ? "noise" : "cluster " + c.cluster) + " \\u00b7 " + c.size + " segments"
        + (c.name ? " \\u00b7 named " + c.name : "");
      div.appendChild(head);
      if (c.cluster >= 0) {
        const inp = document.createElement("input"); inp.placeholder = "name"; inp.className = "cname";
        inp.value = c.name || "";
        const btn = document.createElement("button"); btn.textContent = "name it"; btn.className = "cname-btn";
        btn.addEventListener("click", async () => {
          try {
            const r = await api("/api/clusters/" + encodeURIComponent(run.name) + "/" + c.cluster + "/name",
                                {label: inp.value.trim()});
            status("cluster " + c.cluster + " named; " + r.labeled + " segment(s) labeled"); showClusters();
          } catch (e) { status(e.message, true); }
        });
        div.append(inp, btn);
      }
      const row = document.createElement("div"); row.className = "grid";
      for (const m of c.typical) row.appendChild(tile(m, m.label || m.segment_id, () => {}));
      div.appendChild(row); box.appendChild(div);
    }
  } catch (e) { status(e.message, true); }
}
$("apply").addEventListener("click", () => { offset = 0; loadGrid(); });
$("next").addEventListener("click", () => { offset += PAGE_SIZE; loadGrid(); });
$("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); loadGrid(); });
$("assign").addEventListener("click", assign);
$("unassign").addEventListener("click", unassign);
$("clear-sel").addEventListener("click", () => { selected.clear(); loadGrid(); });
$("show-clusters").addEventListener("click", showClusters);
$("refine").addEventListener("click", refine);
$("text-search").addEventListener("click", textSearch);
$("text-query").addEventListener("keydown", (ev) => { if (ev.key === "Enter") textSearch(); });
$("open-image").addEventListener("click", showImage);
loadGrid();
</script></body></html>
"""
