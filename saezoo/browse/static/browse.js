// saezoo browse: a static feature browser. Data files are scripts that call saezooData(key,
// value) (a page opened from disk may load scripts but not fetch files); latent shards are
// loaded when a view needs them, so the page opens as fast for 65k latents as for 4k.
"use strict";

const store = {};
const waiting = {};
let site = null;
const PAGE = 100;
const state = { sort: "density", query: "", page: 0, order: null };

function saezooData(key, value) {
  store[key] = value;
  for (const resolve of waiting[key] || []) resolve(value);
  delete waiting[key];
  if (key === "index") start(value);
}

function load(key, file) {
  if (key in store) return Promise.resolve(store[key]);
  return new Promise((resolve, reject) => {
    const first = !waiting[key];
    (waiting[key] = waiting[key] || []).push(resolve);
    if (first) {
      const script = document.createElement("script");
      script.src = file;
      script.onerror = () => reject(new Error("cannot load " + file));
      document.head.appendChild(script);
    }
  });
}

async function latent(side, j) {
  const k = Math.floor(j / site.shard);
  const shard = await load(side + ":" + k, "data/" + side + "-" + k + ".js");
  return { rec: shard.latents[j], strings: shard.strings };
}

// --- small DOM helpers ------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}
const fmt = (v, d = 3) => (v === 0 ? "0" : Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3 ? v.toExponential(d - 1) : v.toPrecision(d));
const pct = (v) => (v * 100 < 0.01 && v > 0 ? (v * 100).toExponential(1) : (v * 100).toFixed(2)) + "%";
const show = (s) => s.replace(/\n/g, "↵").replace(/\t/g, "→");
const sideIndex = (side) => site.sides[side === "b" ? 1 : 0];

function groupOf(side, j) {
  let start = 0;
  for (const [name, size] of sideIndex(side).groups) {
    if (j < start + size) return sideIndex(side).groups.length > 1 ? name : "";
    start += size;
  }
  return "";
}

// Shading: white to orange in proportion to activation / the latent's maximum; black text
// stays readable (contrast above 7:1) at full strength.
function shade(v, max) {
  const a = max > 0 ? Math.max(0, Math.min(1, v / max)) : 0;
  return a === 0 ? "" : `background-color: rgba(255, 140, 0, ${a.toFixed(3)})`;
}

function legend(max) {
  return el("div", { class: "legend", "aria-label": "shading legend" },
    el("span", { text: "activation 0" }),
    el("span", { class: "ramp", role: "img", "aria-label": `white is 0, orange is ${fmt(max)}` }),
    el("span", { text: fmt(max) + " (this latent's maximum)" }));
}

function context(example, strings, max, label) {
  const [ctx, toks, vals, focus] = example;
  const line = el("p", { class: "context", title: `context ${ctx}` });
  if (label) line.append(el("span", { class: "label", text: label }));
  toks.forEach((t, i) => {
    line.append(el("span", {
      class: "tok" + (i === focus ? " focus" : ""),
      style: shade(vals[i], max),
      title: `${JSON.stringify(strings[t])}: ${fmt(vals[i])}`,
      text: show(strings[t]),
    }));
  });
  return line;
}

function histogram(rec) {
  const [first, counts] = rec.hist;
  const w = 300, h = 60;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h + 14}`);
  svg.setAttribute("class", "hist");
  svg.setAttribute("role", "img");
  if (!counts.length) { svg.setAttribute("aria-label", "never fired"); return svg; }
  const peak = Math.max(...counts);
  const bw = w / counts.length;
  counts.forEach((c, i) => {
    const r = document.createElementNS(svg.namespaceURI, "rect");
    const bh = (c / peak) * h;
    r.setAttribute("x", i * bw); r.setAttribute("y", h - bh);
    r.setAttribute("width", Math.max(bw - 1, 1)); r.setAttribute("height", bh);
    const title = document.createElementNS(svg.namespaceURI, "title");
    title.textContent = `${fmt(site.edges[first + i])} to ${fmt(site.edges[first + i + 1])}: ${c}`;
    r.append(title);
    svg.append(r);
  });
  for (const [x, v, anchor] of [[0, site.edges[first], "start"], [w, site.edges[first + counts.length], "end"]]) {
    const t = document.createElementNS(svg.namespaceURI, "text");
    t.setAttribute("x", x); t.setAttribute("y", h + 12); t.setAttribute("text-anchor", anchor);
    t.textContent = fmt(v);
    svg.append(t);
  }
  svg.setAttribute("aria-label", `activation histogram on a log scale from ${fmt(site.edges[first])} to ${fmt(site.edges[first + counts.length])}`);
  return svg;
}

const link = (side, j, text) => el("a", { href: `#latent/${side}/${j}`, text: text || `${side === "b" ? "B " : ""}#${j}` });

// --- views ------------------------------------------------------------------------------------
function start(index) {
  site = index;
  document.title = `${site.title}: saezoo browse`;
  document.getElementById("title").textContent = `saezoo browse: ${site.title}`;
  if (site.sides[0].tree) document.getElementById("nav-tree").hidden = false;
  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", keys);
  route();
}

function route() {
  const main = document.getElementById("main");
  const [view, ...rest] = (location.hash.slice(1) || "index").split("/");
  document.body.dataset.ready = "";
  const done = () => {
    document.body.dataset.ready = view;
    // First view on the page, in ms since navigation started (read by benchmarks/browse_speed.py).
    if (window.saezooReadyAt === undefined) window.saezooReadyAt = performance.now();
  };
  main.replaceChildren();
  if (view === "latent") latentView(main, rest[0], Number(rest[1])).then(done);
  else if (view === "tree") { treeView(main); done(); }
  else if (view === "run") { runView(main); done(); }
  else { indexView(main); done(); }
}

function ordered() {
  const s = site.sides[0];
  if (!state.order || state.order.key !== state.sort) {
    const idx = Array.from({ length: s.width }, (_, i) => i);
    const by = { density: (i) => -s.density[i], max: (i) => -s.max[i], latent: (i) => i, token: null }[state.sort];
    if (by) idx.sort((a, b) => by(a) - by(b) || a - b);
    else idx.sort((a, b) => (s.token[a] || "\uffff").localeCompare(s.token[b] || "\uffff") || a - b);
    state.order = { key: state.sort, idx };
  }
  const q = state.query.trim().toLowerCase();
  if (!q) return state.order.idx;
  const asNumber = /^#?\d+$/.test(q) ? Number(q.replace("#", "")) : null;
  return state.order.idx.filter((i) => i === asNumber || s.token[i].toLowerCase().includes(q));
}

function indexView(main) {
  const s = site.sides[0];
  const b = s.match;
  const search = el("input", {
    id: "search", type: "search", value: state.query, placeholder: "latent number or a token it fires on",
    "aria-label": "search latents", oninput: (e) => { state.query = e.target.value; state.page = 0; renderRows(); },
  });
  const sort = el("select", { id: "sort", "aria-label": "sort by", onchange: (e) => { state.sort = e.target.value; state.page = 0; renderRows(); } },
    ...[["density", "firing density"], ["max", "max activation"], ["latent", "latent number"], ["token", "top token"]]
      .map(([v, t]) => el("option", { value: v, selected: v === state.sort, text: t })));
  const body = el("tbody");
  const pager = el("p", { class: "pager" });
  const table = el("table", { class: "index" },
    el("caption", { text: `${s.width.toLocaleString()} latents of ${s.label} (${s.architecture}), ${site.tokens.toLocaleString()} held-out tokens` }),
    el("thead", {}, el("tr", {}, ...["latent", "group", "density", "max act.", "top token", ...(b ? [`best match in ${b.label}`, "cosine"] : [])].map((h) => el("th", { scope: "col", text: h })))),
    body);
  main.append(el("div", { class: "controls" }, el("label", {}, "Search ", search), el("label", {}, "Sort by ", sort)), table, pager);

  function renderRows() {
    const rows = ordered();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    body.replaceChildren(...rows.slice(state.page * PAGE, (state.page + 1) * PAGE).map((j) =>
      el("tr", { tabindex: 0, "data-latent": j, onclick: () => { location.hash = `#latent/a/${j}`; } },
        el("td", {}, link("a", j)), el("td", { text: groupOf("a", j) }), el("td", { text: pct(s.density[j]) }),
        el("td", { text: fmt(s.max[j]) }), el("td", { class: "tokcell", text: show(s.token[j]) }),
        ...(b ? [el("td", {}, link("b", b.latent[j])), el("td", { text: b.cosine[j].toFixed(3) })] : []))));
    pager.replaceChildren(
      el("button", { type: "button", disabled: state.page === 0, onclick: () => { state.page--; renderRows(); }, text: "← previous" }),
      ` page ${state.page + 1} of ${pages} (${rows.length.toLocaleString()} latents) `,
      el("button", { type: "button", disabled: state.page >= pages - 1, onclick: () => { state.page++; renderRows(); }, text: "next →" }));
  }
  renderRows();
}

async function latentPanel(side, j) {
  const { rec, strings } = await latent(side, j);
  const s = sideIndex(side);
  const max = s.max[j];
  const panel = el("section", { class: "panel", "data-side": side, "aria-label": `latent ${j} of ${s.label}` });
  const group = groupOf(side, j);
  panel.append(el("h2", { text: `${s.label} latent ${j}${group ? ` (${group})` : ""}` }),
    el("p", { class: "stats", text: `fires on ${rec.fires.toLocaleString()} of ${site.tokens.toLocaleString()} tokens (${pct(s.density[j])}), max activation ${fmt(max)}` }),
    histogram(rec), legend(max));
  panel.append(el("h3", { text: "Top contexts" }));
  const top = el("div", { class: "contexts top" });
  if (!rec.top.length) top.append(el("p", { text: "Never fired on these tokens." }));
  for (const e of rec.top) top.append(context(e, strings, max));
  panel.append(top);
  if (rec.samples.length) {
    panel.append(el("h3", { text: "Contexts at lower quantiles (sampled from all firings)" }));
    const samples = el("div", { class: "contexts samples" });
    for (const [q, e] of rec.samples) samples.append(context(e, strings, max, `q${Math.round(q * 100)}`));
    panel.append(samples);
  }
  const tokens = (list) => el("ol", { class: "out" }, ...list.map(([t, v]) => el("li", {}, el("code", { text: show(strings[t]) }), ` ${v > 0 ? "+" : ""}${fmt(v)}`)));
  panel.append(el("div", { class: "columns" },
    el("div", { class: "promoted" }, el("h3", { text: "Promotes" }), tokens(rec.pos)),
    el("div", { class: "suppressed" }, el("h3", { text: "Suppresses" }), tokens(rec.neg)),
    el("div", { class: "near" }, el("h3", { text: "Nearest latents (decoder cosine)" }),
      el("ol", {}, ...rec.near.map(([n, c]) => el("li", {}, link(side, n), ` ${c.toFixed(3)} `, el("span", { class: "tokcell", text: show(s.token[n]) })))))));
  const tree = s.tree;
  if (tree) {
    const parent = tree.parents[j];
    const children = childrenOf(s)[j] || [];
    panel.append(el("p", { class: "family" }, `${tree.kind} tree: parent `, parent >= 0 ? link(side, parent) : "none",
      `; ${children.length} children `, ...children.slice(0, 20).flatMap((c) => [link(side, c), " "])));
  }
  return panel;
}

async function latentView(main, side, j) {
  side = side === "b" ? "b" : "a";
  const s = sideIndex(side);
  if (!(j >= 0 && j < s.width)) { main.append(el("p", { text: `no latent ${j}` })); return; }
  main.append(el("nav", { class: "step", "aria-label": "latents" },
    j > 0 ? link(side, j - 1, `← #${j - 1}`) : "", " ", el("a", { href: "#index", text: "index" }), " ",
    j + 1 < s.width ? link(side, j + 1, `#${j + 1} →`) : ""));
  const panels = el("div", { class: "panels" });
  main.append(panels);
  panels.append(await latentPanel(side, j));
  const match = site.sides[0].match;
  if (side === "a" && match) {
    const k = match.latent[j];
    const b = await latentPanel("b", k);
    b.prepend(el("p", { class: "matchnote", text: `best match by decoder cosine: ${match.cosine[j].toFixed(3)}` }));
    panels.append(b);
    panels.classList.add("side-by-side");
  }
  main.focus();
}

let childCache = null;
function childrenOf(s) {
  if (childCache && childCache.s === s) return childCache.children;
  const children = {};
  s.tree.parents.forEach((p, j) => { if (p >= 0) (children[p] = children[p] || []).push(j); });
  for (const list of Object.values(children)) list.sort((a, b) => s.density[b] - s.density[a]);
  childCache = { s, children };
  return children;
}

function treeView(main) {
  const s = site.sides[0];
  if (!s.tree) { main.append(el("p", { text: "This SAE has no tree." })); return; }
  const children = childrenOf(s);
  const roots = Object.keys(children).map(Number).filter((j) => s.tree.parents[j] < 0)
    .sort((a, b) => children[b].length - children[a].length || a - b);
  const how = s.tree.kind === "structural"
    ? "the architecture's own parents (latent_parents)"
    : `inferred: each latent's parent is the more frequent latent firing on the largest share of its tokens, when that share is at least ${s.tree.min_share}`;
  main.append(el("h2", { text: `Tree of ${s.label}` }), el("p", { text: `Parents are ${how}. ${roots.length} roots with children; expand a node to read its children's top contexts and check that they refine it.` }));
  const list = el("ul", { class: "tree", role: "tree" });
  let shown = 0;
  const more = el("button", { type: "button", onclick: () => addRoots(), text: "more roots" });
  function addRoots() {
    for (const r of roots.slice(shown, shown + PAGE)) list.append(node(s, r, children, 1));
    shown += PAGE;
    more.hidden = shown >= roots.length;
  }
  addRoots();
  main.append(list, more);
}

function node(s, j, children, level) {
  const kids = children[j] || [];
  const item = el("li", { role: "treeitem", "aria-level": level, "data-latent": j });
  const head = el("div", { class: "node" });
  const sub = el("ul", { role: "group", hidden: true });
  if (kids.length) {
    const toggle = el("button", { type: "button", class: "toggle", "aria-expanded": "false", "aria-label": `expand latent ${j}`, text: "▸" });
    toggle.addEventListener("click", async () => {
      const open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(open));
      toggle.textContent = open ? "▾" : "▸";
      sub.hidden = !open;
      if (open && !sub.childElementCount) {
        for (const c of kids) sub.append(await childNode(s, c, children, level + 1));
      }
    });
    head.append(toggle);
  } else head.append(el("span", { class: "toggle-space" }));
  head.append(link("a", j), ` ${groupOf("a", j)} · ${pct(s.density[j])} · `, el("span", { class: "tokcell", text: show(s.token[j]) }), ` · ${kids.length} children`);
  item.append(head, sub);
  return item;
}

async function childNode(s, j, children, level) {
  const item = node(s, j, children, level);
  const { rec, strings } = await latent("a", j);
  const inline = el("div", { class: "contexts inline" });
  for (const e of rec.top.slice(0, 3)) inline.append(context(e, strings, s.max[j]));
  item.querySelector(".node").after(inline);
  return item;
}

function runView(main) {
  main.append(el("h2", { text: "Run" }));
  const info = [["model", site.model], ["hook", site.hook], ["dataset", site.dataset], ["held-out tokens", site.tokens.toLocaleString()], ["contexts", site.contexts], ["built in", `${site.seconds} s`]];
  main.append(el("table", { class: "kv" }, ...info.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: String(v) })))));
  for (const s of site.sides) {
    const keys = Object.keys(s.metrics).sort();
    main.append(el("h3", { text: `Metrics of ${s.label} (${s.architecture}, ${s.width} latents)` }));
    if (!keys.length) main.append(el("p", { text: "No metrics recorded (run saezoo eval)." }));
    else main.append(el("table", { class: "kv metrics" }, ...keys.map((k) => el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: fmt(s.metrics[k], 4) })))));
  }
  for (const p of site.plots) main.append(el("figure", {}, el("img", { src: p, alt: p }), el("figcaption", { text: p })));
}

// --- keyboard -----------------------------------------------------------------------------------
function keys(e) {
  const typing = e.target.matches && e.target.matches("input, select, textarea");
  if (e.key === "/" && !typing) { e.preventDefault(); location.hash = "#index"; setTimeout(() => document.getElementById("search")?.focus(), 0); return; }
  if (e.key === "Escape") { location.hash = "#index"; return; }
  if (typing) { if (e.key === "ArrowDown") { e.preventDefault(); document.querySelector("tbody tr")?.focus(); } return; }
  const [view, side, j] = (location.hash.slice(1) || "index").split("/");
  if (view === "latent" && (e.key === "ArrowLeft" || e.key === "ArrowRight")) {
    const next = Number(j) + (e.key === "ArrowRight" ? 1 : -1);
    if (next >= 0 && next < sideIndex(side).width) location.hash = `#latent/${side}/${next}`;
    return;
  }
  const row = e.target.closest && e.target.closest("tr[data-latent]");
  if (row && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
    e.preventDefault();
    (e.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling)?.focus();
  } else if (row && e.key === "Enter") location.hash = `#latent/a/${row.dataset.latent}`;
}
