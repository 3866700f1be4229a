// Metric charts on uPlot (global `uPlot`, vendored in static/vendor/).
//
// A SeriesStore holds each key's points as sorted parallel arrays. The first load is a
// downsampled overview; zooming fetches the visible range at full resolution (still capped by
// the server) and splices it in; live points are appended. A chart redraws from the store at
// most once per animation frame, and never rebuilds its uPlot instance for new data.

import { fetchSeries } from "./api.js";
import { number } from "./numbers.js";

// Okabe–Ito: distinguishable with every common colour-vision deficiency.
export const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"];
const LEVEL_STYLE = {
  warn: { color: "#a15c00", dash: [6, 4] },
  fail: { color: "#7a1f8f", dash: [2, 3] },
  rule: { color: "#14213d", dash: [10, 4] },
};

function lowerBound(arr, v) {
  let lo = 0, hi = arr.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] < v) lo = mid + 1; else hi = mid; }
  return lo;
}

export class SeriesStore {
  constructor() { this.series = new Map(); this.listeners = new Set(); }

  get(key) {
    if (!this.series.has(key)) this.series.set(key, { x: [], y: [], total: null });
    return this.series.get(key);
  }

  // Replace the points of `key` within [lo, hi] by the given sorted points.
  splice(key, x, y, lo = -Infinity, hi = Infinity) {
    const s = this.get(key);
    if (x.length && (x[0] < lo || x[x.length - 1] > hi)) {
      // Never let an answer for a range write outside it (that would duplicate steps).
      const a = lowerBound(x, lo);
      let b = lowerBound(x, hi);
      while (b < x.length && x[b] <= hi) b += 1;
      x = x.slice(a, b); y = y.slice(a, b);
    }
    const i = lowerBound(s.x, lo);
    let j = lowerBound(s.x, hi);
    while (j < s.x.length && s.x[j] <= hi) j += 1;
    s.x = s.x.slice(0, i).concat(x, s.x.slice(j));
    s.y = s.y.slice(0, i).concat(y, s.y.slice(j));
    this.changed(key);
  }

  // Live points: usually past the end (push), sometimes a re-sent step (replace).
  add(points) {
    const touched = new Set();
    for (const p of points) {
      const s = this.get(p.key);
      const step = Number(p.step);
      const value = p.value === null ? null : Number(p.value);
      const n = s.x.length;
      if (n === 0 || step > s.x[n - 1]) { s.x.push(step); s.y.push(value); }
      else {
        const i = lowerBound(s.x, step);
        if (s.x[i] === step) s.y[i] = value;
        else { s.x.splice(i, 0, step); s.y.splice(i, 0, value); }
      }
      if (s.total !== null) s.total += 1;
      touched.add(p.key);
    }
    for (const key of touched) this.changed(key);
    return touched;
  }

  lastStep(key) { const s = this.series.get(key); return s && s.x.length ? s.x[s.x.length - 1] : null; }
  count(key) { const s = this.series.get(key); return s ? s.x.length : 0; }
  onChange(fn) { this.listeners.add(fn); }
  changed(key) { for (const fn of this.listeners) fn(key); }
}

// The one number style (numbers.js, the same rule as the pages' Python).
export function fmt(v) { return number(v); }

// Room for the longest tick label, so "1.5e-4" is never cut at the edge.
function axisSize(u, values) {
  const longest = Math.max(3, ...(values || []).map((v) => String(v).length));
  return Math.ceil(longest * 7.2 + 18);
}

// Axis ticks: short, and blank for the unlabelled minor ticks of a log axis.
export function tick(v) { return v === null || v === undefined ? "" : fmt(v); }

// Threshold lines and incident bands, drawn over the plot area.
// Steps are whole numbers: tick at 1, 2, 5, 10, 20, … never at 0.2 or 0.5.
const STEP_INCRS = Array.from({ length: 13 }, (_, e) => [1, 2, 5].map((m) => m * 10 ** e)).flat();

const SWATCH = 14;  // px of series colour before a threshold label on a multi-metric chart

// Where each threshold's label goes: on its line when the line is in view, stacked at the
// top ("above view") or bottom ("below view") otherwise, and never on top of another label.
function layoutThresholds(chart, u, ctx) {
  const dpr = devicePixelRatio || 1;
  const { left, top, width, height } = u.bbox;
  const [yMin, yMax] = [u.scales.y.min, u.scales.y.max];
  const h = 14 * dpr, pad = 4 * dpr;
  const multi = new Set(chart.keys.map((k) => chart.resolve(k).key)).size > 1;
  const labels = chart.thresholds.map((t) => {
    const name = multi ? `${t.key} ` : "";
    const place = t.value > yMax ? "above" : t.value < yMin ? "below" : "in";
    const text = `${place === "above" ? "↑ " : place === "below" ? "↓ " : ""}${name}${t.label} ${fmt(t.value)}`
      + (place === "in" ? "" : ` (${place} view)`);
    const textWidth = ctx.measureText(text).width;
    const swatch = multi ? PALETTE[t.series % PALETTE.length] : null;
    const w = textWidth + (swatch ? (SWATCH + 4) * dpr : 0);
    const lineY = place === "in" ? u.valToPos(t.value, "y", true) : null;
    const x = place === "in" ? left + width - w - pad : left + pad;
    const y = place === "in" ? lineY - 3 * dpr : place === "above" ? top + h : top + height - pad;
    return { ...t, text, textWidth, swatch, w, h, x, y, lineY, place };
  });
  // Above-view labels first (top down), then lines in view (top down), then below (bottom up).
  const order = { above: 0, in: 1, below: 2 };
  labels.sort((a, b) => order[a.place] - order[b.place] || (a.place === "below" ? b.y - a.y : a.y - b.y));
  const placed = [];
  const hits = (a) => placed.some((b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y - a.h < b.y && b.y - b.h < a.y);
  for (const label of labels) {
    const move = label.place === "below" ? -h : h;
    for (let tries = 0; hits(label) && tries < 50; tries += 1) label.y += move;
    placed.push(label);
  }
  return placed;
}

function annotationsPlugin(chart) {
  return {
    hooks: {
      draw: [(u) => {
        const { ctx } = u;
        const { left, top, width, height } = u.bbox;
        const dpr = devicePixelRatio || 1;
        ctx.save();
        ctx.beginPath(); ctx.rect(left, top, width, height); ctx.clip();
        for (const inc of chart.incidents) {
          if (inc.step === null || inc.step === undefined) continue;
          const x0 = u.valToPos(inc.step, "x", true);
          const x1 = inc.end != null ? u.valToPos(inc.end, "x", true) : left + width;
          ctx.fillStyle = "rgba(213, 94, 0, 0.12)";
          ctx.fillRect(Math.max(x0, left), top, Math.max(x1 - Math.max(x0, left), 2 * dpr), height);
          // Runs side by side (compare): the ▼ takes the colour of the run it happened on.
          ctx.fillStyle = inc.series != null ? PALETTE[inc.series % PALETTE.length] : "#D55E00";
          ctx.beginPath();
          ctx.moveTo(x0, top + height); ctx.lineTo(x0 - 6 * dpr, top + height - 10 * dpr);
          ctx.lineTo(x0 + 6 * dpr, top + height - 10 * dpr); ctx.closePath(); ctx.fill();
        }
        ctx.strokeStyle = "#56B4E9"; ctx.fillStyle = "#0072B2";
        ctx.lineWidth = 1 * dpr; ctx.setLineDash([2 * dpr, 3 * dpr]);
        ctx.font = `${10 * dpr}px system-ui, sans-serif`;
        for (const v of chart.versions) {
          const x = u.valToPos(v.step, "x", true);
          if (x < left || x > left + width) continue;
          ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
          ctx.fillText(v.label, x + 3 * dpr, top + 11 * dpr);
        }
        ctx.setLineDash([]);
        ctx.restore();
        ctx.save();
        ctx.font = `${11 * dpr}px system-ui, sans-serif`;
        ctx.textAlign = "left";  // uPlot leaves its axis-label alignment on the context
        ctx.textBaseline = "alphabetic";
        chart.thresholdLabels = [];
        for (const label of layoutThresholds(chart, u, ctx)) {
          const style = LEVEL_STYLE[label.level] || LEVEL_STYLE.rule;
          ctx.strokeStyle = style.color; ctx.fillStyle = style.color;
          ctx.lineWidth = 1.5 * dpr; ctx.setLineDash(style.dash.map((d) => d * dpr));
          if (label.lineY !== null) {
            ctx.beginPath(); ctx.moveTo(left, label.lineY); ctx.lineTo(left + width, label.lineY); ctx.stroke();
          }
          ctx.setLineDash([]);
          // A label on a chart of several metrics starts with a swatch of the series it judges.
          let x = label.x;
          if (label.swatch) {
            ctx.strokeStyle = label.swatch; ctx.lineWidth = 3 * dpr;
            ctx.beginPath(); ctx.moveTo(x, label.y - 4 * dpr); ctx.lineTo(x + SWATCH * dpr, label.y - 4 * dpr); ctx.stroke();
            x += (SWATCH + 4) * dpr;
          }
          ctx.fillStyle = "rgba(255, 255, 255, 0.85)";  // readable over the series lines
          ctx.fillRect(x - 2 * dpr, label.y - label.h + 3 * dpr, label.textWidth + 4 * dpr, label.h);
          ctx.fillStyle = style.color;
          ctx.fillText(label.text, x, label.y);
          chart.thresholdLabels.push({
            text: label.text, level: label.level, key: label.key,
            x: label.x / dpr, y: (label.y - label.h + 3 * dpr) / dpr, w: label.w / dpr, h: label.h / dpr,
          });
        }
        ctx.restore();
      }],
    },
  };
}

// uPlot's own padding, except that values within [0, 1] (rates, fractions) keep the axis
// within [0, 1]: a clip rate of 0 all along got a 0–100 axis.
function linearRange(u, min, max) {
  if (min === null || max === null) return [0, 1];
  const [lo, hi] = uPlot.rangeNum(min, max, 0.1, true);
  if (min < 0 || max > 1) return [lo, hi];
  return [Math.max(lo, 0), Math.min(hi, 1)];
}

export class MetricChart {
  // keys: the series of this chart; store: shared SeriesStore; opts.run: run id (for refine).
  // `resolve` maps a store key to the run and metric key to fetch (overlays of several runs).
  constructor(el, { keys, store, run, thresholds = {}, incidents = [], log = false, height = 240, names = null,
    resolve = null, versions = [], onZoomChange = null }) {
    this.el = el;
    this.resolve = resolve || ((k) => ({ run, key: k }));
    this.keys = keys;
    this.store = store;
    this.run = run;
    this.log = log;
    this.height = height;
    this.names = names || keys;
    // Each line knows the metric it judges and that metric's first series (its colour).
    const seen = new Set();
    this.thresholds = keys.flatMap((k, series) => {
      const { key } = this.resolve(k);
      if (seen.has(key)) return [];
      seen.add(key);
      return (thresholds[key] || thresholds[k] || []).map((t) => ({ ...t, key, series }));
    });
    this.thresholdLabels = [];
    // Every chart of the run marks every incident: a drift episode is the run's, not one key's.
    this.incidents = incidents;
    // Steps where the weight version changes ({step, label}), drawn as dotted verticals.
    this.versions = versions;
    this.zoomed = null;
    // Told when this chart's x range changes (the page makes the other charts follow).
    this.onZoomChange = onZoomChange;
    this.refineTimer = null;
    this.pending = false;
    this.plotEl = document.createElement("div");
    this.plotEl.className = "plot";
    el.appendChild(this.plotEl);
    this.build();
    store.onChange((key) => { if (this.keys.includes(key)) this.schedule(); });
    new ResizeObserver(() => this.resize()).observe(el);
  }

  data() {
    const cols = this.keys.map((k) => { const s = this.store.get(k); return [s.x, s.y]; });
    if (cols.length === 1) return [cols[0][0], cols[0][1]];
    return uPlot.join(cols);
  }

  // Log needs every value above zero: a metric at or below zero (kl_k1) stays linear and the
  // panel says so, rather than tick "1e-6 / 0 / -1e-6" on an axis that reads as log.
  logFits() {
    return this.keys.every((k) => this.store.get(k).y.every((v) => v === null || v > 0));
  }

  yScale() {
    if (this.log && this.logFits()) return { distr: 3, log: 10 };
    return { auto: true, range: linearRange };
  }

  showScaleNote() {
    const note = this.el.querySelector(".scale-note");
    if (!note) return;
    note.textContent = this.log && !this.logApplied ? "linear: values ≤ 0 have no log" : "";
  }

  build() {
    if (this.plot) this.plot.destroy();
    const keep = this.zoomed;  // a rebuild (log scale, a renamed key) keeps the range
    this.logApplied = this.log && this.logFits();
    this.showScaleNote();
    const self = this;
    const opts = {
      width: Math.max(this.el.clientWidth - 2, 300),
      height: this.height,
      scales: { x: { time: false }, y: this.yScale() },
      legend: { live: true },
      // The cursor moves on every chart of the page at once: one step, read across metrics.
      cursor: { drag: { x: true, y: false, setScale: true }, focus: { prox: 24 }, sync: { key: "steps" } },
      axes: [
        { label: "step", stroke: "#5b6270", grid: { stroke: "#eceef1" }, incrs: STEP_INCRS },
        { stroke: "#5b6270", grid: { stroke: "#eceef1" }, size: axisSize,
          values: (u, vals) => vals.map(tick) },
      ],
      series: [
        { label: "step", value: (u, v) => (v == null ? "–" : String(v)) },
        ...this.keys.map((k, i) => ({
          label: this.names[i], stroke: PALETTE[i % PALETTE.length], width: 1.5,
          spanGaps: true, points: { show: false }, value: (u, v) => fmt(v),
          dash: i === 1 ? [5, 3] : undefined,  // a second series differs by more than hue
        })),
      ],
      plugins: [annotationsPlugin(this)],
      hooks: {
        setScale: [(u, key) => { if (key === "x") self.onZoom(u); }],
      },
    };
    this.plot = new uPlot(opts, this.data(), this.plotEl);
    if (keep) this.plot.setScale("x", keep);
    this.updateCount();
  }

  setLog(on) { this.log = on; this.build(); }

  resize() {
    const w = Math.max(this.el.clientWidth - 2, 300);
    if (this.plot && Math.abs(this.plot.width - w) > 2) this.plot.setSize({ width: w, height: this.height });
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      // A point at or below zero turns a log chart linear (and a later load may turn it back).
      if (this.log && this.logFits() !== this.logApplied) { this.setLog(true); return; }
      // Keep the user's zoom while points stream in; otherwise follow the data.
      this.plot.setData(this.data(), !this.zoomed);
      this.updateCount();
    });
  }

  updateCount() {
    const n = this.keys.reduce((sum, k) => sum + this.store.count(k), 0);
    this.el.dataset.points = String(n);
    this.el.classList.toggle("is-empty", n === 0);
    const total = this.keys.reduce((sum, k) => sum + (this.store.get(k).total || 0), 0);
    const label = this.el.querySelector(".point-count");
    if (label) {
      label.textContent = total > n ? `${n.toLocaleString()} of ${total.toLocaleString()} points shown`
        : `${n.toLocaleString()} points`;
    }
  }

  fullRange() {
    let lo = Infinity, hi = -Infinity;
    for (const k of this.keys) {
      const s = this.store.get(k);
      if (s.x.length) { lo = Math.min(lo, s.x[0]); hi = Math.max(hi, s.x[s.x.length - 1]); }
    }
    return Number.isFinite(lo) ? [lo, hi] : null;
  }

  onZoom(u) {
    const full = this.fullRange();
    const { min, max } = u.scales.x;
    if (!full || min == null) return;
    const was = this.zoomed;
    this.zoomed = (min <= full[0] && max >= full[1]) ? null : { min, max };
    this.el.classList.toggle("is-zoomed", !!this.zoomed);
    // Only a change of range is news: data arriving redraws with the same one.
    const changed = was === null ? this.zoomed !== null
      : this.zoomed === null || was.min !== min || was.max !== max;
    if (changed && this.onZoomChange) this.onZoomChange(this.zoomed);
    if (!this.zoomed) return;
    clearTimeout(this.refineTimer);
    this.refineTimer = setTimeout(() => this.refine(min, max), 200);
  }

  // Fetch the visible range at the resolution the chart can show, and splice it in.
  async refine(min, max) {
    const lo = Math.max(0, Math.floor(min)), hi = Math.max(0, Math.ceil(max));
    const points = Math.min(4 * this.plot.width, 8000);
    await Promise.all(this.keys.map(async (k) => {
      try {
        const { run, key } = this.resolve(k);
        const s = await fetchSeries(run, key, { start: lo, end: hi, points });
        const total = this.store.get(k).total;
        this.store.splice(k, s.x, s.y, lo, hi);
        this.store.get(k).total = total;
      } catch (err) { /* keep the overview */ }
    }));
  }

  zoomTo(min, max) { this.plot.setScale("x", { min, max }); }

  reset() {
    const full = this.fullRange();
    const was = this.zoomed;
    this.zoomed = null;
    this.el.classList.remove("is-zoomed");
    if (full) this.plot.setScale("x", { min: full[0], max: full[1] });
    if (was && this.onZoomChange) this.onZoomChange(null);
  }

  // Show `range` ({min, max}), or everything when null.
  show(range) { if (range) this.zoomTo(range.min, range.max); else this.reset(); }

  // Keyboard: ← → pan by a quarter, + − zoom around the centre, 0 resets.
  key(ev) {
    const full = this.fullRange();
    if (!full) return;
    const { min, max } = this.plot.scales.x;
    const span = max - min;
    const moves = {
      ArrowLeft: [-span / 4, -span / 4], ArrowRight: [span / 4, span / 4],
      "+": [span / 4, -span / 4], "=": [span / 4, -span / 4], "-": [-span / 2, span / 2],
    };
    if (ev.key === "0" || ev.key === "Home") { this.reset(); ev.preventDefault(); return; }
    const m = moves[ev.key];
    if (!m) return;
    ev.preventDefault();
    let a = min + m[0], b = max + m[1];
    if (b - a < 2) return;
    if (a < full[0]) { b += full[0] - a; a = full[0]; }
    if (b > full[1]) { a -= b - full[1]; b = full[1]; }
    this.zoomTo(Math.max(a, full[0]), Math.min(b, full[1]));
  }
}

// One x range for every chart of a page (a shared step axis, as W&B has), and the page's view
// — that range, the charts the user added, log scale — kept in the URL (?x=lo..hi&add=key&log=1)
// with history.replaceState, so that a reload or a shared link opens the same view.
export class PageView {
  constructor(charts) {
    this.charts = charts;
    this.following = false;
    const q = new URLSearchParams(location.search);
    const x = /^(-?\d+)\.\.(-?\d+)$/.exec(q.get("x") || "");
    this.range = x && Number(x[1]) < Number(x[2]) ? { min: Number(x[1]), max: Number(x[2]) } : null;
    this.added = q.getAll("add").filter(Boolean);
    this.log = q.get("log") === "1";
  }

  // A chart's own zoom (drag, keys, buttons, double-click) moves every other chart to it.
  follow(source, range) {
    if (this.following) return;
    this.range = range;
    this.following = true;
    try { for (const c of this.charts) if (c !== source) c.show(range); } finally { this.following = false; }
    this.save();
  }

  // Bring a chart whose points just loaded to the page's range.
  apply(chart) {
    if (!this.range) return;
    this.following = true;
    try { chart.show(this.range); } finally { this.following = false; }
  }

  add(key) { if (!this.added.includes(key)) this.added.push(key); this.save(); }
  remove(key) { this.added = this.added.filter((k) => k !== key); this.save(); }
  setLog(on) { this.log = on; this.save(); }

  save() {
    const q = new URLSearchParams(location.search);
    for (const name of ["x", "add", "log"]) q.delete(name);
    if (this.range) q.set("x", `${Math.floor(this.range.min)}..${Math.ceil(this.range.max)}`);
    for (const key of this.added) q.append("add", key);
    if (this.log) q.set("log", "1");
    const query = q.toString();
    history.replaceState(history.state, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
  }
}

// Wraps a chart in its panel: title, point count, keyboard help, zoom buttons.
export function chartPanel(container, { title, removable = false }) {
  const panel = document.createElement("section");
  panel.className = "chart-panel";
  panel.tabIndex = 0;
  panel.setAttribute("aria-label", `${title} chart. Arrow keys pan, plus and minus zoom, 0 resets.`);
  panel.innerHTML = `
    <header><h3></h3><span class="point-count muted" aria-live="off"></span>
      <span class="scale-note muted"></span>
      <span class="spacer"></span>
      <button type="button" class="small" data-act="in" aria-label="Zoom in">+</button>
      <button type="button" class="small" data-act="out" aria-label="Zoom out">−</button>
      <button type="button" class="small" data-act="left" aria-label="Pan left">←</button>
      <button type="button" class="small" data-act="right" aria-label="Pan right">→</button>
      <button type="button" class="small" data-act="reset">Reset zoom</button>
      ${removable ? '<button type="button" class="small ghost" data-act="remove" aria-label="Remove chart">✕</button>' : ""}
    </header>`;
  panel.querySelector("h3").textContent = title;
  container.appendChild(panel);
  return panel;
}

export function wirePanel(panel, chart, onRemove) {
  const keyFor = { in: "+", out: "-", left: "ArrowLeft", right: "ArrowRight" };
  panel.addEventListener("click", (ev) => {
    const act = ev.target.closest("button")?.dataset.act;
    if (!act) return;
    if (act === "reset") chart.reset();
    else if (act === "remove") { chart.plot.destroy(); panel.remove(); if (onRemove) onRemove(); }
    else chart.key({ key: keyFor[act], preventDefault() {} });
  });
  panel.addEventListener("keydown", (ev) => { if (ev.target === panel) chart.key(ev); });
}
