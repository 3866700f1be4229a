// Run page: live metric charts.
// Order matters for not losing points: open the websocket first and buffer what it sends,
// load the overview from the API, then apply the buffer (a re-sent step just replaces).
// After a reconnect, back-fill every key from its last step.

import { fetchSeries } from "./api.js";
import { MetricChart, PageView, SeriesStore, chartPanel, wirePanel } from "./charts.js";
import { connectLive } from "./live.js";

const config = JSON.parse(document.getElementById("chart-config").textContent);
const root = document.getElementById("charts");
const liveState = document.getElementById("live-state");
const keySelect = document.getElementById("add-key");
const logToggle = document.getElementById("log-scale");
const store = new SeriesStore();
const charts = [];
// The zoom every chart shares and the charts the user added, kept in the URL.
const view = new PageView(charts);
let buffer = [];
let loaded = false;

function overviewPoints() {
  // Two points per pixel column of the widest chart keeps min/max spikes visible.
  return Math.min(Math.max(2 * root.clientWidth, 800), 6000);
}

async function load(keys, range = {}) {
  await Promise.all(keys.map(async (key) => {
    try {
      const s = await fetchSeries(config.run, key, { ...range, points: overviewPoints() });
      const kept = store.get(key).total;
      if (range.start !== undefined) {
        store.splice(key, s.x, s.y, range.start, Infinity);
        store.get(key).total = (kept || 0) + s.x.length;
      } else {
        // Points that streamed in after the server's answer was built stay.
        const end = s.x.length ? s.x[s.x.length - 1] : -Infinity;
        store.splice(key, s.x, s.y, -Infinity, end);
        store.get(key).total = s.total;
      }
    } catch (err) {
      showError(`Could not load ${key}: ${err.message}`);
    }
  }));
}

function showError(text) {
  const box = document.getElementById("chart-error");
  box.textContent = text;
  box.hidden = false;
}

// A framework's key charted as the canonical metric it is: "kl_k3 ← verl rollout_corr/k3_kl".
const labels = config.labels || {};
// Where the weight version changes: shared by every chart, extended as points stream in.
const versions = config.versions || [];
let lastVersion = config.version ? config.version.value : null;
let lastVersionStep = config.version ? config.version.step : -1;

function addChart(keys, { removable = false } = {}) {
  const names = keys.map((k) => labels[k] || k);
  const panel = chartPanel(root, { title: names.join(" / "), removable });
  panel.dataset.keys = keys.join(",");
  const chart = new MetricChart(panel, {
    keys, store, run: config.run, thresholds: config.thresholds, incidents: config.incidents,
    log: logToggle.checked, names: [...names], versions,
    onZoomChange: (range) => view.follow(chart, range),
  });
  charts.push(chart);
  wirePanel(panel, chart, () => {
    charts.splice(charts.indexOf(chart), 1);
    for (const key of keys) view.remove(key);
  });
  return chart;
}

function chartedKeys() { return new Set(charts.flatMap((c) => c.keys)); }

function knownKey(key) {
  if ([...keySelect.options].some((o) => o.value === key)) return;
  const option = new Option(key, key);
  keySelect.add(option);
}

function onPoints(points) {
  if (!loaded) { buffer.push(...points); return; }
  document.getElementById("charts-empty")?.remove();
  for (const p of points) knownKey(p.key);
  adoptFrameworkKeys(points);
  markVersions(points);
  store.add(points);
  const last = Math.max(...points.map((p) => Number(p.step)));
  const el = document.getElementById("last-step");
  if (el && (!el.dataset.step || last > Number(el.dataset.step))) {
    el.dataset.step = String(last);
    el.textContent = String(last);
  }
}

// A run that sends its framework's keys to a page opened before any point: a canonical chart
// still empty takes the framework's key for it ("kl_k3 ← verl rollout_corr/k3_kl").
function adoptFrameworkKeys(points) {
  const aliases = config.aliases || {};
  for (const key of new Set(points.map((p) => p.key))) {
    const alias = aliases[key];
    if (!alias || chartedKeys().has(key)) continue;
    const [canonical, label] = alias;
    const chart = charts.find((c) => c.keys.includes(canonical) && store.count(canonical) === 0);
    if (!chart || points.some((p) => p.key === canonical)) continue;
    const i = chart.keys.indexOf(canonical);
    chart.keys[i] = key;
    chart.names[i] = labels[key] = `${canonical} ← ${label}`;
    chart.el.dataset.keys = chart.keys.join(",");
    chart.el.querySelector("h3").textContent = chart.names.join(" / ");
    chart.build();
  }
}

function markVersions(points) {
  const seen = points.filter((p) => p.key === "weight_version").sort((a, b) => a.step - b.step);
  for (const p of seen) {
    if (lastVersion !== null && p.value !== lastVersion && Number(p.step) > lastVersionStep) {
      versions.push({ step: Number(p.step), label: `v${p.value}` });
      for (const c of charts) c.schedule();
    }
    if (Number(p.step) >= lastVersionStep) { lastVersion = p.value; lastVersionStep = Number(p.step); }
  }
}

function onJob(job) {
  const badge = document.getElementById("run-status");
  const text = document.getElementById("job-line");
  if (text) text.textContent = `Job #${job.id}: ${job.status} · ${job.stage || ""}`;
  if (badge && ["succeeded", "failed"].includes(job.status)) {
    const status = job.status === "succeeded" ? "finished" : "failed";
    badge.textContent = status;
    badge.className = `badge status-${status}`;
  }
}

// An incident fired, moved or ended: shade the charts and redraw the page's incidents
// section from the server (the same template a reload would render).
function onIncident(inc) {
  const span = {
    id: inc.id, step: inc.step, end: inc.end, key: inc.key,
    label: `${inc.severity}: ${inc.key} (${inc.state})`,
  };
  const i = config.incidents.findIndex((s) => s.id === inc.id);
  if (i >= 0) config.incidents[i] = span; else config.incidents.push(span);
  for (const c of charts) c.schedule();
  refreshIncidents();
}

async function refreshIncidents() {
  const response = await fetch(location.pathname, { credentials: "same-origin" });
  if (!response.ok) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = page.getElementById("run-incidents");
  const here = document.getElementById("run-incidents");
  if (fresh && here) here.replaceWith(fresh);
}

function onRun(run) {
  const badge = document.getElementById("run-status");
  if (badge && run.status) { badge.textContent = run.status; badge.className = `badge status-${run.status}`; }
}

async function backfill() {
  await Promise.all([...chartedKeys()].map(async (key) => {
    const last = store.lastStep(key);
    await load([key], last === null ? {} : { start: last + 1 });
  }));
}

// A chart the user adds (or a reload restores from the URL): it loads, then joins the page's zoom.
async function addUserChart(key) {
  const chart = addChart([key], { removable: true });
  view.add(key);
  chart.el.classList.add("is-loading");
  await load([key]);
  chart.el.classList.remove("is-loading");
  view.apply(chart);
  return chart;
}

async function main() {
  logToggle.checked = view.log;
  for (const keys of config.charts) addChart(keys).el.classList.add("is-loading");
  const live = connectLive(`/ws/runs/${config.run}/`, {
    onMessage(msg) {
      if (msg.kind === "points") onPoints(msg.data.points || []);
      else if (msg.kind === "job") onJob(msg.data);
      else if (msg.kind === "run" || msg.kind === "status") onRun(msg.data);
      else if (msg.kind === "incident") onIncident(msg.data);
    },
    // Opened after the first load (slow socket) or again after a drop: fetch the gap.
    onOpen() { if (loaded) backfill(); },
    onState(state) {
      // The connection's state, apart from the run's (the badge): a finished run is not "live".
      liveState.textContent = { live: "● connected", reconnecting: "○ reconnecting…", closed: "○ offline" }[state];
      liveState.dataset.state = state;
    },
  });
  // Handles for tests and for debugging from the console.
  window.parityLive = live;
  window.parityStore = store;
  window.parityCharts = charts;
  window.parityIncidents = config.incidents;
  await load([...chartedKeys()]);
  for (const c of charts) c.el.classList.remove("is-loading");
  await Promise.all(view.added.map(addUserChart));
  for (const c of charts) view.apply(c);
  loaded = true;
  const early = buffer; buffer = [];
  if (early.length) onPoints(early);
  root.dataset.ready = "1";

  keySelect.addEventListener("change", async () => {
    const key = keySelect.value;
    if (!key) return;
    keySelect.value = "";
    const chart = await addUserChart(key);
    chart.el.focus();
    chart.el.scrollIntoView({ block: "nearest" });
  });
  logToggle.addEventListener("change", () => {
    view.setLog(logToggle.checked);
    for (const c of charts) c.setLog(logToggle.checked);
  });
}

main();
