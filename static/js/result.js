// Comparison result page: live progress while the job runs; |d| histogram and lr-vs-lt
// scatter once it has a result; a keyboard-visible tooltip on the worst sequences' tokens.

import { connectLive } from "./live.js";
import { PALETTE, fmt, tick } from "./charts.js";

const job = JSON.parse(document.getElementById("job-config").textContent);
const plots = JSON.parse(document.getElementById("plot-data").textContent);
const FINAL = ["succeeded", "failed", "cancelled"];

function showProgress(data) {
  const pct = Math.round((data.progress || 0) * 100);
  const bar = document.getElementById("job-progress");
  bar.querySelector(".bar").style.width = `${pct}%`;
  bar.setAttribute("aria-valuenow", String(pct));
  document.getElementById("job-pct").textContent = `${pct}%`;
  document.getElementById("job-stage").textContent = data.stage || "";
  const status = document.getElementById("job-status");
  status.textContent = data.status;
  status.className = `badge status-${data.status}`;
  if (data.error) {
    document.getElementById("job-error-text").textContent = data.error;
    document.getElementById("job-error").hidden = false;
  }
}

if (!job.final) {
  const live = connectLive(`/ws/jobs/${job.id}/`, {
    onMessage(msg) {
      if (msg.kind !== "job") return;
      showProgress(msg.data);
      // The result is rendered by the server: fetch the finished page once.
      if (FINAL.includes(msg.data.status)) { live.close(); location.reload(); }
    },
    // A job can finish while the socket is down: ask once more after every (re)connect.
    async onOpen() {
      try {
        const res = await fetch(`/api/jobs/${job.id}`, { credentials: "same-origin" });
        if (!res.ok) return;
        const data = await res.json();
        showProgress(data);
        if (FINAL.includes(data.status)) { live.close(); location.reload(); }
      } catch (err) { /* the socket will tell us */ }
    },
  });
}

function width(el) { return Math.max(el.clientWidth - 4, 280); }

function histogram(el, h) {
  const edges = h.edges || [], counts = h.counts || [];
  if (!counts.length || edges.length < counts.length + 1) { el.closest("figure").hidden = true; return; }
  // Edges span 1e-8 .. 20 nats whatever the data: show the occupied bins, one spare each side.
  let first = counts.findIndex((c) => c > 0), last = counts.length - 1;
  while (last > 0 && counts[last] === 0) last -= 1;
  if (first < 0) { first = 0; last = counts.length - 1; }
  first = Math.max(0, first - 1); last = Math.min(counts.length - 1, last + 1);
  const xs = [], ys = [];
  for (let i = first; i <= last; i++) {
    const lo = edges[i], hi = edges[i + 1];
    xs.push(lo > 0 && hi > 0 ? Math.sqrt(lo * hi) : (lo + hi) / 2);
    ys.push(counts[i]);
  }
  const logX = xs.every((x) => x > 0);
  const u = new uPlot({
    width: width(el), height: 220,
    scales: { x: { time: false, ...(logX ? { distr: 3 } : {}) }, y: { range: (u, a, b) => [0, b * 1.05 || 1] } },
    axes: [{ label: "|d| (nats)", values: (u, v) => v.map(tick) }, { label: "tokens", size: 60 }],
    series: [
      { label: "|d| ≈", value: (u, v) => fmt(v) },
      { label: "tokens", fill: "rgba(0,114,178,0.55)", stroke: PALETTE[0],
        paths: uPlot.paths.bars({ size: [0.9, 80] }), points: { show: false } },
    ],
    legend: { live: true },
  }, [xs, ys], el);
  el.dataset.bins = String(xs.length);
  if (h.zeros) {
    const note = document.createElement("p");
    note.className = "muted";
    note.textContent = `${h.zeros.toLocaleString()} tokens with d = 0 exactly (not on the log axis).`;
    el.after(note);
  }
  return u;
}

function scatter(el, s) {
  const lr = s.lr || [], lt = s.lt || [];
  if (!lr.length) { el.closest("figure").hidden = true; return; }
  const order = lr.map((_, i) => i).sort((a, b) => lr[a] - lr[b]);
  const xs = order.map((i) => lr[i]), ys = order.map((i) => lt[i]);
  const lo = Math.min(xs[0], ...ys.filter(Number.isFinite)), hi = Math.max(xs[xs.length - 1], ...ys.filter(Number.isFinite));
  const size = Math.min(width(el), 520);
  const u = new uPlot({
    width: size, height: Math.min(size, 420),
    scales: { x: { time: false, range: [lo, hi] }, y: { range: [lo, hi] } },
    axes: [{ label: "lr (engine)" }, { label: "lt (trainer)", size: 56 }],
    cursor: { points: { size: 8 } },
    series: [
      { label: "lr", value: (u, v) => fmt(v) },
      { label: "lt", stroke: PALETTE[0], fill: "rgba(0,114,178,0.35)", paths: () => null,
        points: { show: true, size: 4, width: 0, fill: "rgba(0,114,178,0.45)" }, value: (u, v) => fmt(v) },
      { label: "lt = lr", stroke: PALETTE[1], dash: [6, 4], width: 1.5, points: { show: false } },
    ],
  }, [xs, ys, xs], el);
  el.dataset.points = String(xs.length);
  return u;
}

if (document.getElementById("histogram")) {
  histogram(document.getElementById("histogram"), plots.histogram || {});
  scatter(document.getElementById("scatter"), plots.scatter || {});
}

// Tokens: the native title covers the mouse; this covers the keyboard.
const tip = document.getElementById("tok-tip");
if (tip) {
  document.addEventListener("focusin", (ev) => {
    const tok = ev.target.closest?.(".tok[data-tip]");
    if (!tok) { tip.hidden = true; return; }
    tip.textContent = tok.dataset.tip;
    const r = tok.getBoundingClientRect();
    tip.style.left = `${r.left + window.scrollX}px`;
    tip.style.top = `${r.bottom + window.scrollY + 4}px`;
    tip.hidden = false;
  });
  document.addEventListener("focusout", () => { tip.hidden = true; });
}
