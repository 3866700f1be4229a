// Migration checklist result (templates/checklist_result.html): the |d| histogram of every
// variant overlaid on one uPlot chart, and copy buttons for the recommended settings.
//
// Each variant is a stepped line with its own colour AND dash pattern (never colour alone);
// y is the share of the variant's tokens per bin, so variants with different token counts
// compare. |d| = 0 exactly and non-finite tokens cannot sit on a log axis: listed below.

import { PALETTE, fmt, tick } from "./charts.js";
import { number } from "./numbers.js";

const DASHES = [undefined, [8, 4], [2, 3], [12, 3, 3, 3], [4, 4], [1, 2]];

function histData(el) {
  const raw = el.dataset.hist || document.getElementById(el.dataset.histId || "")?.textContent;
  try { return raw ? JSON.parse(raw) : null; } catch (err) { return null; }
}

function drawHistogram(el) {
  const h = histData(el);
  const panel = el.closest("figure");
  const series = (h && h.series) || [];
  const edges = (h && h.edges) || [];
  if (!series.length || edges.length < 2) {
    el.textContent = "No variant was measured: nothing to plot.";
    el.classList.add("is-empty");
    return null;
  }
  // Show the bins any variant occupies, one spare each side.
  let first = edges.length, last = -1;
  for (const s of series) {
    s.counts.forEach((c, i) => { if (c > 0) { first = Math.min(first, i); last = Math.max(last, i); } });
  }
  if (last < 0) { first = 0; last = edges.length - 2; }
  first = Math.max(0, first - 1); last = Math.min(edges.length - 2, last + 1);
  const xs = [];
  for (let i = first; i <= last; i++) xs.push(Math.sqrt(edges[i] * edges[i + 1]));
  const ys = series.map((s) => {
    const total = s.counts.reduce((a, b) => a + b, 0) + (s.zeros || 0);
    return s.counts.slice(first, last + 1).map((c) => (total ? c / total : 0));
  });
  const top = Math.max(0.01, ...ys.flat());
  if (typeof uPlot === "undefined") {
    el.textContent = "The chart library did not load; the numbers are in the table above.";
    return null;
  }
  const u = new uPlot({
    width: Math.max(el.clientWidth - 4, 300), height: 280,
    scales: { x: { time: false, distr: 3 }, y: { range: [0, top * 1.08] } },
    axes: [
      { label: "|d| = |lt − lr| (nats)", values: (u, v) => v.map(tick) },
      { label: "share of tokens", size: 64, values: (u, v) => v.map((x) => `${Math.round(x * 1000) / 10}%`) },
    ],
    series: [
      { label: "|d| ≈", value: (u, v) => fmt(v) },
      ...series.map((s, i) => ({
        label: s.label, stroke: PALETTE[i % PALETTE.length], width: 2, dash: DASHES[i % DASHES.length],
        paths: uPlot.paths.stepped({ align: 0 }), points: { show: false },
        value: (u, v) => (v == null ? "–" : `${number(v * 100, 3)}%`),
      })),
    ],
    legend: { live: true },
  }, [xs, ...ys], el);
  el.dataset.series = String(series.length);
  const notes = series.filter((s) => s.zeros || s.nonfinite)
    .map((s) => `${s.label}: ${s.zeros || 0} tokens with d = 0 exactly, ${s.nonfinite || 0} non-finite`);
  if (notes.length && panel) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = `Not on the log axis — ${notes.join("; ")}.`;
    panel.appendChild(p);
  }
  new ResizeObserver(() => {
    const w = Math.max(el.clientWidth - 4, 300);
    if (Math.abs(u.width - w) > 2) u.setSize({ width: w, height: 280 });
  }).observe(el);
  return u;
}

function wireCopy(root) {
  root.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-copy]");
    if (!btn) return;
    const code = document.getElementById(btn.dataset.copy);
    if (!code) return;
    try {
      await navigator.clipboard.writeText(code.textContent);
      btn.textContent = "Copied";
    } catch (err) {
      // No clipboard (insecure context): select the text so Ctrl+C works.
      const range = document.createRange();
      range.selectNodeContents(code);
      const sel = window.getSelection();
      sel.removeAllRanges(); sel.addRange(range);
      btn.textContent = "Selected — press Ctrl+C";
    }
    setTimeout(() => { btn.textContent = "Copy"; }, 2000);
  });
}

document.querySelectorAll(".checklist-hist").forEach(drawHistogram);
document.querySelectorAll(".checklist").forEach(wireCopy);
