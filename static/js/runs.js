// Runs list: new runs, status changes and incidents appear without a reload.
// The project's socket says when a run starts, ends or fires; the server renders the table
// and this re-fetches it (same filters, same page), keeping ticked checkboxes and focus. A
// slow poll refreshes the latest values of running runs.
import { connectLive } from "./live.js";

const box = document.getElementById("runs-live");
const EVERY_MS = 30000;
const SETTLE_MS = 300;  // a burst of changes (a job starting its run) is one refresh
let soon = null;

function refreshSoon() {
  clearTimeout(soon);
  soon = setTimeout(refresh, SETTLE_MS);
}

async function refresh() {
  if (document.hidden || !box) return;
  try {
    const res = await fetch(box.dataset.url, { headers: { "X-Requested-With": "fetch" } });
    if (!res.ok) return;
    const html = await res.text();
    if (html === box.dataset.last) return;
    const ticked = new Set([...box.querySelectorAll("input[name=run]:checked")].map((el) => el.value));
    const focused = document.activeElement && box.contains(document.activeElement)
      ? document.activeElement.getAttribute("href") || document.activeElement.value : null;
    box.innerHTML = html;
    box.dataset.last = html;
    for (const input of box.querySelectorAll("input[name=run]")) input.checked = ticked.has(input.value);
    if (focused) {
      const again = [...box.querySelectorAll("a, input")].find(
        (el) => (el.getAttribute("href") || el.value) === focused);
      if (again) again.focus();
    }
    box.dispatchEvent(new CustomEvent("runs:refreshed"));
  } catch (err) {
    // Offline for a moment: the next tick tries again.
  }
}

if (box) {
  box.dataset.last = "";
  setInterval(refresh, EVERY_MS);
  document.addEventListener("visibilitychange", refresh);
  // Reopened after a drop: what changed meanwhile is fetched at once.
  connectLive(`/ws/projects/${box.dataset.project}/`, {
    onMessage: refreshSoon,
    onOpen({ reconnect }) { if (reconnect) refresh(); },
  });
}
