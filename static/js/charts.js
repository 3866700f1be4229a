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
          ctx.fillStyle = "#D55E00";
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
        const [yMin, yMax] = [u.scales.y.min, u.scales.y.max];
        for (const t of chart.thresholds) {
          const style = LEVEL_STYLE[t.level] || LEVEL_STYLE.rule;
          ctx.strokeStyle = style.color; ctx.fillStyle = style.color;
          ctx.lineWidth = 1.5 * dpr; ctx.setLineDash(style.dash.map((d) => d * dpr));
          const text = `${t.label} ${fmt(t.value)}`;
          if (t.value >= yMin && t.value <= yMax) {
            const y = u.valToPos(t.value, "y", true);
            ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
            ctx.fillText(text, left + width - ctx.measureText(text).width - 4 * dpr, y - 3 * dpr);
          } else if (t.value > yMax) {
            ctx.fillText(`▲ ${text} (above view)`, left + 4 * dpr, top + 12 * dpr);
          }
        }
        ctx.restore();
      }],
    },
  };
}

export class MetricChart {
  // keys: the series of this chart; store: shared SeriesStore; opts.run: run id (for refine).
  // `resolve` maps a store key to the run and metric key to fetch (overlays of several runs).
  constructor(el, { keys, store, run, thresholds = {}, incidents = [], log = false, height = 240, names = null,
    resolve = null, versions = [] }) {
    this.el = el;
    this.resolve = resolve || ((k) => ({ run, key: k }));
    this.keys = keys;
    this.store = store;
    this.run = run;
    this.log = log;
    this.height = height;
    this.names = names || keys;
    this.thresholds = keys.flatMap((k) => thresholds[k] || []);
    // Every chart of the run marks every incident: a drift episode is the run's, not one key's.
    this.incidents = incidents;
    // Steps where the weight version changes ({step, label}), drawn as dotted verticals.
    this.versions = versions;
    this.zoomed = null;
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

  yScale() {
    if (!this.log) return { auto: true };
    let allPositive = true;
    for (const k of this.keys) {
      for (const v of this.store.get(k).y) { if (v !== null && v <= 0) { allPositive = false; break; } }
    }
    // log for positive metrics (kl_k3, clip_rate); asinh where values cross zero (kl_k1).
    return allPositive ? { distr: 3, log: 10 } : { distr: 4, asinh: 1e-6 };
  }

  build() {
    if (this.plot) this.plot.destroy();
    const self = this;
    const opts = {
      width: Math.max(this.el.clientWidth - 2, 300),
      height: this.height,
      scales: { x: { time: false }, y: this.yScale() },
      legend: { live: true },
      cursor: { drag: { x: true, y: false, setScale: true }, focus: { prox: 24 } },
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
    this.updateCount();
  }

  setLog(on) { this.log = on; const x = this.zoomed; this.build(); if (x) this.plot.setScale("x", x); }

  resize() {
    const w = Math.max(this.el.clientWidth - 2, 300);
    if (this.plot && Math.abs(this.plot.width - w) > 2) this.plot.setSize({ width: w, height: this.height });
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
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
    this.zoomed = (min <= full[0] && max >= full[1]) ? null : { min, max };
    this.el.classList.toggle("is-zoomed", !!this.zoomed);
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
    this.zoomed = null;
    this.el.classList.remove("is-zoomed");
    if (full) this.plot.setScale("x", { min: full[0], max: full[1] });
  }

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

// Wraps a chart in its panel: title, point count, keyboard help, zoom buttons.
export function chartPanel(container, { title, removable = false }) {
  const panel = document.createElement("section");
  panel.className = "chart-panel";
  panel.tabIndex = 0;
  panel.setAttribute("aria-label", `${title} chart. Arrow keys pan, plus and minus zoom, 0 resets.`);
  panel.innerHTML = `
    <header><h3></h3><span class="point-count muted" aria-live="off"></span>
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
