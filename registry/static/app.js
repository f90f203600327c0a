// The registry browser: a search box, view pages (definition, lineage graph, status), served by
// `mlfs registry serve` and reading only its JSON API.
"use strict";

const main = document.getElementById("main");

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

async function api(path) {
  const answer = await fetch(path);
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error || answer.statusText);
  return body;
}

function table(headers, rows) {
  const head = headers.map((h) => `<th>${esc(h)}</th>`).join("");
  const body = rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function viewLink(name) {
  return `<a href="#/view/${encodeURIComponent(name)}">${esc(name)}</a>`;
}

function duration(seconds) {
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds % size === 0) return `${seconds / size}${unit}`;
  }
  return `${seconds}s`;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace(".000", "") : "-";
}

async function home() {
  const page = await api("/api/views?limit=200");
  main.innerHTML = `<h1>Views <span class="muted">(${page.total})</span></h1>` + table(
    ["View", "Entities", "Window", "Features", "Source", "Owner"],
    page.items.map((v) => [viewLink(v.name), esc(v.entities.join(", ")), esc(v.window),
      esc(v.features.join(", ")), esc(v.source), esc(v.owner || "-")]));
}

async function search(query) {
  document.getElementById("search").value = query;
  const page = await api(`/api/search?limit=200&q=${encodeURIComponent(query)}`);
  const rows = page.items.map((hit) => {
    const target = hit.kind === "view" ? viewLink(hit.name)
      : hit.kind === "feature" ? viewLink(hit.summary.view) + `:${esc(hit.summary.name)}` : esc(hit.name);
    const about = hit.summary.description || hit.summary.aggregation || "";
    return [`<span class="kind">${esc(hit.kind)}</span>`, target, esc(about)];
  });
  main.innerHTML = `<h1>Search: ${esc(query)} <span class="muted">(${page.total} found)</span></h1>` +
    (rows.length ? table(["Kind", "Name", "About"], rows) : "<p>Nothing matches.</p>");
}

function lineageSvg(graph, focus) {
  // Layered layout: a node's column is the longest path to it from a node with no inputs.
  const depth = {};
  graph.nodes.forEach((n) => { depth[n.id] = 0; });
  for (let pass = 0; pass < graph.nodes.length; pass++) {
    let changed = false;
    graph.edges.forEach((e) => {
      if (depth[e.to] < depth[e.from] + 1) { depth[e.to] = depth[e.from] + 1; changed = true; }
    });
    if (!changed) break;
  }
  const columns = {};
  graph.nodes.forEach((n) => { (columns[depth[n.id]] = columns[depth[n.id]] || []).push(n); });
  const width = 210, height = 34, gapX = 60, gapY = 18, pos = {};
  let rows = 0;
  Object.keys(columns).forEach((c) => {
    columns[c].forEach((n, i) => { pos[n.id] = {x: 10 + c * (width + gapX), y: 10 + i * (height + gapY)}; });
    rows = Math.max(rows, columns[c].length);
  });
  const cols = Object.keys(columns).length;
  const colours = {source: "#d8ecd9", transform: "#f4ead2", view: "#d9e4f7", store: "#ece0f3", model: "#f6dcd9", entity: "#e4e4e4"};
  const edges = graph.edges.map((e) => {
    const a = pos[e.from], b = pos[e.to];
    return `<line x1="${a.x + width}" y1="${a.y + height / 2}" x2="${b.x}" y2="${b.y + height / 2}" stroke="#8a93a6" marker-end="url(#arrow)"><title>${esc(e.label)}</title></line>`;
  }).join("");
  const nodes = graph.nodes.map((n) => {
    const p = pos[n.id];
    const label = n.label.length > 30 ? n.label.slice(0, 29) + "…" : n.label;
    const text = n.kind === "view" ? `<a href="#/view/${encodeURIComponent(n.name)}"><text x="${p.x + 8}" y="${p.y + 21}">${esc(label)}</text></a>`
      : `<text x="${p.x + 8}" y="${p.y + 21}">${esc(label)}</text>`;
    const stroke = n.id === focus ? "#1d2330" : "#aab2c2";
    return `<g class="node" data-id="${esc(n.id)}"><title>${esc(n.kind)}: ${esc(n.label)}</title><rect x="${p.x}" y="${p.y}" width="${width}" height="${height}" rx="5" fill="${colours[n.kind] || "#eee"}" stroke="${stroke}" stroke-width="${n.id === focus ? 2 : 1}"/>${text}</g>`;
  }).join("");
  return `<svg id="lineage" width="${cols * (width + gapX) + 20}" height="${rows * (height + gapY) + 20}">` +
    `<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#8a93a6"/></marker></defs>` +
    edges + nodes + "</svg>";
}

function statusHtml(s) {
  const b = s.backfill, st = s.stream, d = s.dead_letters;
  const backfill = b ? `${esc(b.engine)} over [${esc(b.start || "beginning")}, ${esc(b.end)}), finished ${when(b.finished_at)} in ${b.seconds}s; ${b.offline_rows} offline rows, ${b.online_written} online writes`
    : "never run";
  const stream = st ? `${esc(st.state)} (job ${esc(st.job_id || "-")} on ${esc(st.master)}); ${st.counts.input} events in, ${st.rows_out} rows out, ${st.counts.late} late, freshness ${st.freshness_ms == null ? "-" : Math.round(st.freshness_ms) + " ms"}`
    : "not streamed";
  return `<div class="grid" id="status">
    <div>last backfill</div><div>${backfill}</div>
    <div>streaming job</div><div>${stream}</div>
    <div>last online write</div><div>${when(s.last_online_write)}</div>
    <div>dead letters</div><div>${d.records} record(s) in ${d.files} file(s) (backfill ${d.backfill}, stream ${d.stream})</div>
  </div>`;
}

async function view(name) {
  const [v, graph, status] = await Promise.all([
    api(`/api/views/${encodeURIComponent(name)}`),
    api(`/api/lineage/${encodeURIComponent("view:" + name)}`),
    api(`/api/views/${encodeURIComponent(name)}/status`),
  ]);
  const transform = v.event_transform ? `<code>${esc(v.event_transform.ref)}</code> <span class="muted mono">sha256:${esc(v.event_transform.source_sha256.slice(0, 12))}</span>` : "-";
  const stages = [...(v.inference.before_aggregation || []), ...(v.inference.after_aggregation || [])];
  const history = v.history.map((h) => [esc(h.version), esc(h.applied_at || "-"), `<span class="mono">${esc((h.spec_hash || "").slice(0, 12))}</span>`, esc(h.changes || "")]);
  main.innerHTML = `<h1>${esc(v.name)} <span class="muted">v${esc(v.version)}</span></h1>
    <p>${esc(v.description)}</p>
    <div class="grid" id="definition">
      <div>entities</div><div>${esc(v.entities.join(", "))} (keys ${esc(v.keys.map((k) => k.name).join(", "))})</div>
      <div>source</div><div>${esc(v.source)} (time field <code>${esc(v.timestamp_field)}</code>)</div>
      <div>window</div><div>${esc(v.window)}</div>
      <div>event transform</div><div>${transform}</div>
      <div>function</div><div><code>${esc(v.function.ref)}</code></div>
      <div>ttl</div><div>${v.ttl_s ? esc(duration(v.ttl_s)) : "none"}</div>
      <div>stores</div><div>${v.online ? "online " : ""}${v.offline ? "offline" : ""}</div>
      <div>owner</div><div>${esc(v.owner || "-")}</div>
      <div>tags</div><div>${esc(Object.entries(v.tags).map(([k, x]) => `${k}=${x}`).join(", ") || "-")}</div>
      <div>inference stages</div><div>${esc(stages.map((s) => `${s.name} (${s.model.kind})`).join(", ") || "-")}</div>
      <div>joins</div><div>${v.joins.map((j) => esc(j.text)).join("<br>") || "-"}</div>
    </div>
    <h2>Features</h2>${table(["Feature", "Type", "Aggregation"], v.aggregations.map((a) => [esc(a.feature), esc(a.dtype), `<code>${esc(a.aggregation)}</code>`]))}
    <h2>Lineage</h2><div class="card">${lineageSvg(graph, "view:" + v.name)}</div>
    <h2>Status</h2>${statusHtml(status)}
    <h2>Versions</h2>${table(["Version", "Applied", "Hash", "Changes"], history)}`;
}

async function route() {
  const hash = decodeURIComponent(location.hash.slice(1) || "/");
  try {
    if (hash.startsWith("/view/")) await view(hash.slice(6));
    else if (hash.startsWith("/search/")) await search(hash.slice(8));
    else await home();
  } catch (err) {
    main.innerHTML = `<p class="error">${esc(err.message)}</p>`;
  }
  document.body.dataset.ready = "true";
}

document.getElementById("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  location.hash = "#/search/" + encodeURIComponent(document.getElementById("search").value);
});
api("/api/health").then((h) => { document.getElementById("project").textContent = `project ${h.project} · ${h.views} views`; });
window.addEventListener("hashchange", route);
route();
