// Runs list: new runs and status changes appear without a reload.
// The server renders the table; this only re-fetches it (same filters, same page) while the
// tab is visible, and keeps the user's ticked checkboxes and focus.
const box = document.getElementById("runs-live");
const EVERY_MS = 5000;

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
}
