// traitlens dashboard: hash routes over the JSON endpoints; plots are hand-written SVG.
"use strict";

const view = document.getElementById("view");
const tip = document.getElementById("tooltip");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (v, d = 3) => (v === null || v === undefined) ? "–" : (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : esc(v));
const svgNS = "http://www.w3.org/2000/svg";

async function api(path) {
  const r = await fetch(path, {credentials: "same-origin"});
  const body = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function table(rows, cols, opts = {}) {
  if (!rows.length) return `<p class="muted">${opts.empty || "none yet"}</p>`;
  const head = cols.map((c) => `<th>${esc(c.label || c.key)}</th>`).join("");
  const body = rows.map((r) => "<tr>" + cols.map((c) => {
    const v = c.render ? c.render(r) : fmt(r[c.key]);
    return `<td class="${typeof r[c.key] === "number" ? "num" : ""}">${v}</td>`;
  }).join("") + "</tr>").join("");
  return `<table${opts.id ? ` id="${opts.id}"` : ""}><tr>${head}</tr>${body}</table>`;
}

function pager(data, onPage) {
  const pages = Math.max(1, Math.ceil(data.total / data.page_size));
  const div = document.createElement("div");
  div.className = "pager";
  div.innerHTML = `<button ${data.page <= 0 ? "disabled" : ""} data-p="${data.page - 1}">‹ newer</button>` +
    `<span class="muted">page ${data.page + 1} of ${pages} (${data.total})</span> ` +
    `<button ${data.page + 1 >= pages ? "disabled" : ""} data-p="${data.page + 1}">older ›</button>`;
  div.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => onPage(Number(b.dataset.p))));
  return div;
}

function showTip(ev, text) { tip.textContent = text; tip.hidden = false; tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px"; }
function hideTip() { tip.hidden = true; }

// a diverging colour for a value in [-1, 1]: blue (negative) through white to red (positive)
function diverging(t) {
  t = Math.max(-1, Math.min(1, t || 0));
  const a = Math.abs(t), base = 255;
  const r = t > 0 ? base : Math.round(base - 180 * a), b = t < 0 ? base : Math.round(base - 180 * a);
  const g = Math.round(base - 150 * a);
  return `rgb(${r},${g},${b})`;
}
// sequential colour for a metric in [lo, hi]
function sequential(v, lo, hi) {
  if (v === null || v === undefined) return "#e6e6e6";
  const t = Math.max(0, Math.min(1, (v - lo) / ((hi - lo) || 1)));
  return `rgb(${Math.round(247 - 200 * t)},${Math.round(251 - 120 * t)},${Math.round(255 - 90 * t)})`;
}

// ---------------------------------------------------------------------------------- pages
async function overview() {
  const d = await api("/api/overview");
  document.getElementById("store-path").textContent = d.store;
  view.innerHTML = `<h1>Store</h1><h2>Groups</h2>` +
    table(d.groups, [{key: "path", label: "group"}, {key: "prompts"}, {key: "layers", render: (r) => r.layers.length ? `${r.layers.length} (L${r.layers[0]}–L${r.layers[r.layers.length - 1]})` : "–"}], {empty: "no activations yet: `traitlens ingest`"}) +
    `<h2>Traits</h2>` +
    table(d.traits, [{key: "trait", render: (r) => r.vectors ? `<a href="#/trait/${encodeURIComponent(r.trait)}">${esc(r.trait)}</a>` : esc(r.trait)},
      {key: "positive"}, {key: "negative"}, {key: "unlabelled"}, {key: "datasets"}, {key: "vectors"}], {id: "traits"}) +
    `<h2>Latest runs</h2><div id="runs"></div>`;
  renderRuns(d.runs);
}

function renderRuns(data) {
  const box = document.getElementById("runs");
  box.innerHTML = table(data.items, [{key: "run_id", render: (r) => `<span class="mono">${esc(r.run_id)}</span>`}, {key: "stage"},
    {key: "status", render: (r) => `<span class="${r.status === "done" ? "ok" : (r.status === "running" ? "" : "bad")}">${esc(r.status)}</span>`},
    {key: "started_at"}, {key: "ended_at"}, {key: "message"}]);
  box.appendChild(pager(data, async (p) => renderRuns(await api(`/api/runs?page=${p}`))));
}

const METRICS = ["auroc", "balanced_accuracy", "cohens_d", "stability", "agreement", "steer_shift"];

async function traitPage(name, by = "auroc") {
  const d = await api(`/api/traits/${encodeURIComponent(name)}?by=${by}`);
  view.innerHTML = `<h1>Trait: ${esc(name)}</h1>
    <p>colour by <select id="by">${METRICS.map((m) => `<option ${m === by ? "selected" : ""}>${m}</option>`).join("")}</select>
    <span class="muted">— the boxed cell is the vector the selection rule picks; click a cell to open its vector</span></p>
    <div id="heatmaps"></div>
    <h2>Floors</h2>` +
    table([d.floors], [{key: "random", label: `random direction (best ${by})`}, {key: "length", label: "token count alone (AUROC)"}, {key: "dataset", label: "source dataset alone (AUROC)"}]) +
    `<h2>Steering</h2><div id="steering"></div><h2>Top scores on the pick</h2>` +
    table(d.top_scores, [{key: "calibrated"}, {key: "percentile"}, {key: "dataset"}, {key: "label"}, {key: "text", render: (r) => esc(String(r.text || "").slice(0, 160))}], {empty: "no scores: `traitlens score --trait " + esc(name) + "`"});
  document.getElementById("by").addEventListener("change", (e) => traitPage(name, e.target.value));
  const box = document.getElementById("heatmaps");
  for (const g of d.groups) box.appendChild(heatmap(g, by, d.pick));
  document.getElementById("steering").appendChild(steeringPlot(d.steering));
}

function heatmap(g, by, pick) {
  const cw = 74, ch = 16, left = 46, top = 34;
  const wrap = document.createElement("div");
  wrap.innerHTML = `<h2 class="mono">${esc(g.path)}</h2>`;
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("class", "heatmap");
  svg.setAttribute("width", left + cw * g.methods.length + 10);
  svg.setAttribute("height", top + ch * g.layers.length + 10);
  const vals = g.cells.map((c) => c[by]).filter((v) => v !== null && v !== undefined);
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const add = (tag, attrs, text) => { const el = document.createElementNS(svgNS, tag); for (const k in attrs) el.setAttribute(k, attrs[k]); if (text !== undefined) el.textContent = text; svg.appendChild(el); return el; };
  g.methods.forEach((m, j) => add("text", {x: left + j * cw + cw / 2, y: top - 8, "text-anchor": "middle"}, m));
  g.layers.forEach((l, i) => add("text", {x: left - 6, y: top + i * ch + ch - 4, "text-anchor": "end"}, `L${l}`));
  for (const c of g.cells) {
    const i = g.layers.indexOf(c.layer), j = g.methods.indexOf(c.method);
    const r = add("rect", {x: left + j * cw, y: top + i * ch, width: cw, height: ch, class: "cell", fill: sequential(c[by], lo, hi),
      "data-layer": c.layer, "data-method": c.method, "data-vector-id": c.vector_id});
    const lines = [`${c.method} L${c.layer}  (${c.vector_id})`].concat(["auroc", "balanced_accuracy", "cohens_d", "stability", "agreement", "steer_shift", "floor_length", "floor_dataset", "n_pos", "n_neg", "n_held_pos", "n_held_neg"].map((k) => `${k}: ${fmt(c[k])}`));
    r.addEventListener("mousemove", (ev) => showTip(ev, lines.join("\n")));
    r.addEventListener("mouseleave", hideTip);
    r.addEventListener("click", () => { hideTip(); location.hash = `#/vector/${c.vector_id}`; });
    add("text", {x: left + j * cw + cw / 2, y: top + i * ch + ch - 4, "text-anchor": "middle", "pointer-events": "none"}, (c[by] === null || c[by] === undefined) ? "–" : c[by].toFixed(2));
    if (c.vector_id === pick) add("rect", {x: left + j * cw + 1, y: top + i * ch + 1, width: cw - 2, height: ch - 2, class: "pick"});
  }
  wrap.appendChild(svg);
  return wrap;
}

// steering: effect (shift, with its interval) against damage (KL on neutral prompts) where the
// evaluation measured it, the Pareto view; else against alpha. One series per vector and kind.
function steeringPlot(rows) {
  const div = document.createElement("div");
  if (!rows.length) { div.innerHTML = `<p class="muted">no steering measurements: \`traitlens evaluate --steering\`</p>`; return div; }
  const pareto = rows.some((r) => r.kl !== null && r.kl !== undefined);
  const raw = (r) => pareto ? r.kl : r.alpha;
  const pts = rows.filter((r) => raw(r) !== null && raw(r) !== undefined && r.shift !== null);
  // KL spans decades (0.01 to 10 nats): a log axis then, clamped at 1e-4
  const logx = pareto && pts.some((r) => r.kl > 0) && Math.max(...pts.map(raw)) / Math.max(1e-4, Math.min(...pts.map(raw).filter((v) => v > 0))) > 50;
  const xOf = (r) => logx ? Math.log10(Math.max(1e-4, raw(r))) : raw(r);
  const W = 780, H = 320, L = 56, B = 34, T = 24, R = 215;  // R: the legend's width
  const xs = pts.map(xOf), ys = pts.flatMap((r) => [r.shift, r.ci_low ?? r.shift, r.ci_high ?? r.shift]);
  const x0 = logx ? Math.min(...xs) : Math.min(0, ...xs), x1 = Math.max(...xs), y0 = Math.min(0, ...ys), y1 = Math.max(0, ...ys);
  const X = (v) => L + (W - L - R) * (v - x0) / ((x1 - x0) || 1), Y = (v) => H - B - (H - B - T) * (v - y0) / ((y1 - y0) || 1);
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("class", "steering");
  svg.dataset.mode = pareto ? "pareto" : "alpha";
  const add = (tag, attrs, text) => { const el = document.createElementNS(svgNS, tag); for (const k in attrs) el.setAttribute(k, attrs[k]); if (text !== undefined) el.textContent = text; svg.appendChild(el); return el; };
  add("line", {x1: L, x2: W - R, y1: Y(0), y2: Y(0), stroke: "#bbb"});
  add("text", {x: (W - R + L) / 2, y: H - 6, "text-anchor": "middle"}, pareto ? `damage: KL of next tokens on neutral prompts (nats${logx ? ", log scale" : ""})` : "alpha (units of the layer's mean token norm)");
  add("text", {x: 4, y: 12}, "shift (steered effect, 95% CI)");
  if (logx) for (let e = Math.ceil(x0); e <= Math.floor(x1); e++) add("text", {x: X(e), y: H - B + 14, "text-anchor": "middle"}, String(10 ** e >= 1 ? 10 ** e : (10 ** e).toFixed(-e)));
  else [x0, x1].forEach((v) => add("text", {x: X(v), y: H - B + 14, "text-anchor": "middle"}, fmt(v, pareto ? 3 : 2)));
  [y0, y1].forEach((v) => add("text", {x: L - 4, y: Y(v) + 4, "text-anchor": "end"}, fmt(v, 2)));
  const series = {};
  pts.forEach((r) => { (series[`${r.method} L${r.layer} ${r.kind}${r.norm && r.norm !== "typical" ? " (norm " + r.norm + ")" : ""}`] ||= []).push(r); });
  const colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"];
  Object.entries(series).forEach(([name, ps], k) => {
    const col = name.startsWith("random") ? "#999" : colours[k % colours.length];
    ps.sort((a, b) => a.alpha - b.alpha);
    add("polyline", {points: ps.map((p) => `${X(xOf(p))},${Y(p.shift)}`).join(" "), fill: "none", stroke: col, "stroke-dasharray": name.startsWith("random") ? "4 3" : ""});
    ps.forEach((p) => {
      if (p.ci_low !== null && p.ci_low !== undefined) add("line", {x1: X(xOf(p)), x2: X(xOf(p)), y1: Y(p.ci_low), y2: Y(p.ci_high), stroke: col, "stroke-opacity": 0.6});
      const c = add("circle", {cx: X(xOf(p)), cy: Y(p.shift), r: 3.5, fill: col, class: "point"});
      c.addEventListener("mousemove", (ev) => showTip(ev, `${name}  alpha ${fmt(p.alpha)}\nshift ${fmt(p.shift)} [${fmt(p.ci_low)}, ${fmt(p.ci_high)}]\nKL ${fmt(p.kl, 4)}  wrong way ${p.wrong_way === null || p.wrong_way === undefined ? "–" : Math.round(100 * p.wrong_way) + "%"}\nunsteered ${fmt(p.unsteered)}  + ${fmt(p.plus)}  − ${fmt(p.minus)}  n ${p.n}`));
      c.addEventListener("mouseleave", hideTip);
    });
    add("text", {x: W - R + 8, y: T + 13 * k, fill: col}, name);
  });
  div.appendChild(svg);
  return div;
}

async function vectorPage(id) {
  const d = await api(`/api/vectors/${id}`);
  const v = d.vector;
  const prov = ["vector_id", "trait", "method", "layer", "model_key", "fmt", "site", "pooling", "held_split", "n_pos", "n_neg", "fingerprint", "code_version", "run_id", "created_at", "raw_norm", "polarity"];
  view.innerHTML = `<h1>Vector <span class="mono">${esc(id)}</span></h1>
    <p><a href="#/trait/${encodeURIComponent(v.trait)}">← ${esc(v.trait)}</a> · <a href="#/tokens/${id}">tokens</a> ·
    download <a id="export-safetensors" href="/api/vectors/${id}/export?format=safetensors">safetensors</a> ·
    ${v.layer > 0 ? `<a id="export-gguf" href="/api/vectors/${id}/export?format=gguf">GGUF control vector</a>`
      : `<a id="export-gguf" href="/api/vectors/${id}/export?format=easysteer">EasySteer GGUF</a> <span class="muted">(llama.cpp's control vectors have no layer 0)</span>`}</p>
    <h2>Provenance</h2>` + table(prov.filter((k) => k in v).map((k) => ({field: k, value: v[k]})), [{key: "field"}, {key: "value", render: (r) => `<span class="mono">${fmt(r.value)}</span>`}], {id: "provenance"}) +
    `<h2>Metrics (held-out)</h2>` + table(Object.entries(d.metrics).filter(([k]) => k !== "null_reasons").map(([k, x]) => ({metric: k, value: x === null && d.metrics.null_reasons && d.metrics.null_reasons[k] ? d.metrics.null_reasons[k] : x})), [{key: "metric"}, {key: "value"}]) +
    `<h2>Parameters</h2><pre class="mono">${esc(JSON.stringify(v.params, null, 1))}</pre>` +
    `<h2>Nearest vectors</h2>` + table(d.nearest, [{key: "vector_id", render: (r) => `<a class="mono" href="#/vector/${r.vector_id}">${esc(r.vector_id)}</a>`}, {key: "trait"}, {key: "method"}, {key: "layer"}, {key: "cosine"}]) +
    `<h2>Steering</h2>` + table(d.steering, [{key: "kind"}, {key: "alpha"}, {key: "n"}, {key: "unsteered"}, {key: "plus"}, {key: "minus"}, {key: "shift"}, {key: "ci_low", label: "CI low"}, {key: "ci_high", label: "CI high"}, {key: "wrong_way", label: "wrong way"}, {key: "steerability"}, {key: "kl", label: "KL (nats)", render: (r) => fmt(r.kl, 4)}], {empty: "not evaluated: `traitlens evaluate --steering`"}) +
    `<h2>Scores</h2>` + table([d.scores], [{key: "n", label: "prompts scored"}, {key: "mean"}, {key: "min"}, {key: "max"}]);
}

function tokenSpans(tokens, commitment) {
  const m = Math.max(1e-9, ...tokens.map((t) => Math.abs(t.projection ?? 0)));
  return tokens.map((t) => `<span class="tok${t.generated ? " generated" : ""}${commitment !== null && commitment !== undefined && t.position === commitment ? " commit" : ""}"` +
    ` style="background:${diverging((t.projection ?? 0) / m)}" data-projection="${t.projection}" data-velocity="${t.velocity ?? ""}"` +
    ` title="projection ${fmt(t.projection)}  velocity ${fmt(t.velocity)}${t.acceleration !== undefined ? "  acceleration " + fmt(t.acceleration) : ""}">${esc(t.token)}</span>`).join("");
}

async function tokensPage(id, page = 0, tpage = 0) {
  const [held, traj] = await Promise.all([api(`/api/vectors/${id}/tokens?page=${page}`), api(`/api/trajectories?vector_id=${id}&page=${tpage}`)]);
  view.innerHTML = `<h1>Tokens on <a class="mono" href="#/vector/${id}">${esc(id)}</a></h1>
    <p class="legend">each token coloured by its projection on the vector (red: toward the trait, blue: away; scaled per prompt); hover for the values; the outlined token is a trajectory's commitment point; dotted: generated</p>
    <h2>Held-out prompts</h2><div id="held"></div><h2>Monitor trajectories</h2><div id="traj"></div>`;
  const hb = document.getElementById("held");
  if (!held.available) hb.innerHTML = `<p class="muted">${esc(held.reason)}</p>`;
  else {
    hb.innerHTML = `<p class="muted">${held.group}, layer ${held.layer}, split ${held.split}</p>` + held.items.map((p) =>
      `<div class="prompt" data-prompt-id="${p.prompt_id}"><span class="muted">label ${p.label > 0 ? "+1" : "−1"}</span> ${tokenSpans(p.tokens, null)}</div>`).join("");
    hb.appendChild(pager(held, (p) => tokensPage(id, p, tpage)));
  }
  const tb = document.getElementById("traj");
  tb.innerHTML = traj.items.length ? traj.items.map((t) => `<div class="prompt" data-prompt-id="${t.prompt_id}"><span class="muted mono">${esc(t.run_id)} L${t.layer}${t.commitment !== null ? " · commits at token " + t.commitment : ""}</span><br>${tokenSpans(t.tokens, t.commitment)}</div>`).join("")
    : `<p class="muted">none stored: \`traitlens monitor --trait ... --store-trajectories\`</p>`;
  if (traj.items.length) tb.appendChild(pager(traj, (p) => tokensPage(id, page, p)));
}

function sqlPage() {
  const last = sessionStorage.getItem("sql") || "SELECT trait, method, layer, auroc FROM metrics ORDER BY auroc DESC LIMIT 20";
  view.innerHTML = `<h1>SQL</h1><p class="muted">read-only: SELECT, WITH, EXPLAIN, DESCRIBE, SHOW over the store's views (prompts, rows, runs, vectors, metrics, scores, scored, replies, projection_diffs, steering, trajectories, groups, act_L&lt;k&gt;)</p>
    <textarea id="sql-text">${esc(last)}</textarea><p><button id="sql-run">Run</button> <a id="sql-csv" href="#">download CSV</a> <span class="muted">(at most 1,000 rows, like the page; <code>traitlens query --format csv -o FILE</code> writes them all)</span></p>
    <div id="sql-error" class="error" hidden></div><div id="sql-result"></div>`;
  const run = async () => {
    const text = document.getElementById("sql-text").value;
    sessionStorage.setItem("sql", text);
    document.getElementById("sql-csv").href = `/api/sql.csv?q=${encodeURIComponent(text)}`;
    const err = document.getElementById("sql-error"), out = document.getElementById("sql-result");
    err.hidden = true; out.innerHTML = `<p class="muted">running…</p>`;
    try {
      const d = await api(`/api/sql?q=${encodeURIComponent(text)}`);
      out.innerHTML = `<p class="muted">${d.rows_total === null ? "more than " + d.rows.length : d.rows_total} rows${d.truncated ? ` (first ${d.rows.length} shown; <code>traitlens query</code> writes them all)` : ""}</p>` +
        table(d.rows, d.columns.map((c) => ({key: c, render: (r) => { const x = r[c]; return Array.isArray(x) ? `<span class="mono">[${x.length} values]</span>` : (typeof x === "object" && x !== null ? esc(JSON.stringify(x)) : fmt(x)); }})), {id: "sql-table", empty: "no rows"});
    } catch (e) { out.innerHTML = ""; err.textContent = e.message; err.hidden = false; }
  };
  document.getElementById("sql-run").addEventListener("click", run);
  document.getElementById("sql-csv").href = `/api/sql.csv?q=${encodeURIComponent(last)}`;
}

async function route() {
  hideTip();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "trait" && parts[1]) await traitPage(parts[1]);
    else if (parts[0] === "vector" && parts[1]) await vectorPage(parts[1]);
    else if (parts[0] === "tokens" && parts[1]) await tokensPage(parts[1]);
    else if (parts[0] === "sql") sqlPage();
    else await overview();
    document.body.dataset.page = parts[0] || "overview";
  } catch (e) {
    view.innerHTML = `<div class="error" id="page-error">${esc(e.message)}</div>`;
  }
}

window.addEventListener("hashchange", route);
route();
