// The inspector page: polls /debug/summary and /debug/graph, draws tables, sparklines and the
// graph with DOM methods only (text is never parsed as HTML), and looks keys up.
"use strict";
const svgNs = "http://www.w3.org/2000/svg";
const history = new Map(); // arrangement name -> updates over the last polls
const HISTORY = 60;

function el(tag, text) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function bytes(b) {
  if (b >= 1 << 30) return (b / (1 << 30)).toFixed(1) + " GiB";
  if (b >= 1 << 20) return (b / (1 << 20)).toFixed(1) + " MiB";
  if (b >= 1 << 10) return (b / 1024).toFixed(1) + " KiB";
  return b + " B";
}

function sparkline(values) {
  const w = 120, h = 20, s = svg("svg", { width: w, height: h, role: "img" });
  s.appendChild(svg("line", { x1: 1, y1: h - 1, x2: w - 1, y2: h - 1, stroke: "#ddd" }));
  const max = Math.max(1, ...values);
  const points = values.map((v, i) =>
    `${(i * (w - 2)) / Math.max(1, HISTORY - 1) + 1},${h - 1 - (v / max) * (h - 2)}`);
  s.appendChild(svg("polyline", { class: "spark", points: points.join(" ") }));
  // The latest value as a dot, visible from the first poll on.
  const last = points[points.length - 1].split(",");
  s.appendChild(svg("circle", { cx: last[0], cy: last[1], r: 2, fill: "#1565c0" }));
  return s;
}

function renderSummary(s) {
  const lag = (s.consumer_lag || []).reduce((a, p) => a + p[1], 0);
  const status = document.getElementById("status");
  status.className = "";
  status.textContent = `${s.workers.length} workers, completed epoch ${s.completed_epoch ?? "none yet"}` +
    ((s.consumer_lag || []).length ? `, consumer lag ${lag} records` : "") +
    `, updated ${new Date().toLocaleTimeString()}`;
  const merges = new Map((s.merges || []).map((m) => [m.name, m]));
  const body = document.querySelector("#arrangements tbody");
  body.replaceChildren();
  for (const a of s.arrangements) {
    const h = history.get(a.name) || [];
    h.push(a.updates);
    while (h.length > HISTORY) h.shift();
    history.set(a.name, h);
    const tr = el("tr");
    tr.dataset.name = a.name;
    const m = merges.get(a.name);
    for (const v of [a.name, a.updates, a.live_keys ?? "–", a.batches, bytes(a.bytes), m ? m.merges_completed : 0]) {
      tr.appendChild(el("td", v));
    }
    const td = el("td");
    td.appendChild(sparkline(h));
    tr.appendChild(td);
    body.appendChild(tr);
  }
  const ops = document.querySelector("#operators tbody");
  ops.replaceChildren();
  for (const o of s.operators.slice(0, 20)) {
    const tr = el("tr");
    for (const v of [o.name, o.activations, (o.elapsed_ns / 1e6).toFixed(1)]) tr.appendChild(el("td", v));
    ops.appendChild(tr);
  }
}

// One box per operator in the dataflow's scope, in address order, top to bottom; channels are
// arcs on the right (longer arcs for longer jumps), labelled by nothing but their thickness.
function renderGraph(g) {
  const ops = g.operators.filter((o) => o.address.length === 2).sort((a, b) => a.address[1] - b.address[1]);
  const row = new Map(ops.map((o, i) => [o.address[1], i]));
  const rowH = 22, boxW = 180, h = ops.length * rowH + 10, w = boxW + 420;
  const s = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": "dataflow graph" });
  const maxRecords = Math.max(1, ...g.channels.map((c) => c.records_sent));
  for (const c of g.channels) {
    if (c.scope.length !== 1) continue;
    const from = row.get(c.source[0]), to = row.get(c.target[0]);
    if (from === undefined || to === undefined) continue;
    const y1 = from * rowH + 16, y2 = to * rowH + 16, bend = boxW + 10 + Math.min(400, Math.abs(to - from) * 14);
    s.appendChild(svg("path", {
      class: "edge",
      d: `M ${boxW} ${y1} C ${bend} ${y1}, ${bend} ${y2}, ${boxW} ${y2}`,
      "stroke-width": 0.5 + (3 * Math.log1p(c.records_sent)) / Math.log1p(maxRecords),
    }));
  }
  for (const [i, o] of ops.entries()) {
    const gEl = svg("g", { class: "node" });
    gEl.appendChild(svg("rect", { x: 2, y: i * rowH + 6, width: boxW - 4, height: rowH - 4, rx: 3 }));
    const t = svg("text", { x: 8, y: i * rowH + 20 });
    t.textContent = `${o.name} (${(o.elapsed_ns / 1e6).toFixed(0)} ms)`;
    gEl.appendChild(t);
    s.appendChild(gEl);
  }
  document.getElementById("graph").replaceChildren(s);
}

async function poll() {
  try {
    const [summary, graph] = await Promise.all([
      fetch("/debug/summary").then((r) => r.json()),
      fetch("/debug/graph").then((r) => r.json()),
    ]);
    renderSummary(summary);
    renderGraph(graph);
  } catch (e) {
    const status = document.getElementById("status");
    status.className = "error";
    status.textContent = "cannot reach the process: retrying…";
  }
}

document.getElementById("lookup").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = document.getElementById("answer");
  const q = new URLSearchParams({
    day: document.getElementById("day").value.trim(),
    user: document.getElementById("user").value.trim(),
    neighbours: "3",
  });
  try {
    const r = await fetch(`/debug/lookup?${q}`);
    const body = await r.json();
    if (!r.ok) {
      answer.replaceChildren(el("p", body.error || `HTTP ${r.status}`));
      answer.firstChild.className = "error";
      return;
    }
    const s = body.standing;
    const lines = [`${body.total} steps at epoch ${body.epoch} (${body.final ? "final" : "open"})`];
    if (s) lines.push(`rank ${s.rank} of ${s.users}; gap up ${s.gap_up ?? "none"}, gap down ${s.gap_down ?? "none"}`);
    answer.replaceChildren(...lines.map((l) => el("p", l)));
    answer.firstChild.id = "answer-total";
  } catch (e) {
    answer.replaceChildren(el("p", "the lookup failed: " + e));
  }
});

poll();
setInterval(poll, 2000);
