// Compare page: each shared key on one chart, one series per run, with the run page's
// threshold lines and each run's incidents; one zoom for every chart, kept in the URL.

import { fetchSeries } from "./api.js";
import { MetricChart, PageView, SeriesStore, chartPanel, wirePanel } from "./charts.js";

const config = JSON.parse(document.getElementById("chart-config").textContent);
const root = document.getElementById("charts");
const store = new SeriesStore();
const charts = [];
const view = new PageView(charts);

async function addChart(key, removable = false) {
  const panel = chartPanel(root, { title: key, removable });
  panel.dataset.keys = key;
  const keys = config.runs.map((r) => `${r.id}:${key}`);
  const chart = new MetricChart(panel, {
    keys, store, names: config.runs.map((r) => r.name),
    resolve: (k) => ({ run: Number(k.split(":")[0]), key: k.slice(k.indexOf(":") + 1) }),
    log: document.getElementById("log-scale").checked,
    thresholds: config.thresholds || {}, incidents: config.incidents || [],
    onZoomChange: (range) => view.follow(chart, range),
  });
  charts.push(chart);
  wirePanel(panel, chart, () => { charts.splice(charts.indexOf(chart), 1); view.remove(key); });
  if (removable) view.add(key);
  panel.classList.add("is-loading");
  await Promise.all(config.runs.map(async (r) => {
    try {
      const s = await fetchSeries(r.id, key, { points: Math.min(2 * root.clientWidth, 4000) });
      store.splice(`${r.id}:${key}`, s.x, s.y);
      store.get(`${r.id}:${key}`).total = s.total;
    } catch (err) {
      const box = document.getElementById("chart-error");
      box.textContent = `Could not load ${key} of ${r.name}: ${err.message}`;
      box.hidden = false;
    }
  }));
  panel.classList.remove("is-loading");
  view.apply(chart);
  return chart;
}

if (root) {
  const logToggle = document.getElementById("log-scale");
  logToggle.checked = view.log;
  const restored = [...view.added];
  Promise.all([
    ...config.charts.map((c) => addChart(c[0])),
    ...restored.filter((k) => config.keys.includes(k)).map((k) => addChart(k, true)),
  ]).then(() => { root.dataset.ready = "1"; });
  window.parityCharts = charts;
  const select = document.getElementById("add-key");
  select?.addEventListener("change", () => {
    if (select.value) addChart(select.value, true);
    select.value = "";
  });
  logToggle.addEventListener("change", (ev) => {
    view.setLog(ev.target.checked);
    for (const c of charts) c.setLog(ev.target.checked);
  });
}
