// Compare page: each shared key on one chart, one series per run.

import { fetchSeries } from "./api.js";
import { MetricChart, SeriesStore, chartPanel, wirePanel } from "./charts.js";

const config = JSON.parse(document.getElementById("chart-config").textContent);
const root = document.getElementById("charts");
const store = new SeriesStore();
const charts = [];

function addChart(key, removable = false) {
  const panel = chartPanel(root, { title: key, removable });
  panel.dataset.keys = key;
  const keys = config.runs.map((r) => `${r.id}:${key}`);
  const chart = new MetricChart(panel, {
    keys, store, names: config.runs.map((r) => r.name),
    resolve: (k) => ({ run: Number(k.split(":")[0]), key: k.slice(k.indexOf(":") + 1) }),
    log: document.getElementById("log-scale").checked,
  });
  charts.push(chart);
  wirePanel(panel, chart, () => charts.splice(charts.indexOf(chart), 1));
  return Promise.all(config.runs.map(async (r) => {
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
}

if (root) {
  Promise.all(config.charts.map((c) => addChart(c[0]))).then(() => { root.dataset.ready = "1"; });
  const select = document.getElementById("add-key");
  select?.addEventListener("change", () => {
    if (select.value) addChart(select.value, true);
    select.value = "";
  });
  document.getElementById("log-scale").addEventListener("change", (ev) => {
    for (const c of charts) c.setLog(ev.target.checked);
  });
}
