// A websocket that comes back: reconnects with backoff and tells the page when it is open
// again, so the page can back-fill whatever it missed from the API.

const FINAL_CODES = new Set([4401, 4404]);  // ours: not allowed / no such object, don't retry

export function connectLive(path, { onMessage, onOpen, onState } = {}) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  let ws = null;
  let delay = 500;
  let opens = 0;
  let stopped = false;
  let holdUntil = 0;

  function state(s) { if (onState) onState(s); }

  function open() {
    ws = new WebSocket(`${proto}://${location.host}${path}`);
    ws.onopen = () => {
      delay = 500;
      opens += 1;
      state("live");
      if (onOpen) onOpen({ reconnect: opens > 1 });
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (err) { return; }
      if (onMessage) onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (stopped) return;
      if (FINAL_CODES.has(ev.code)) { state("closed"); return; }
      state("reconnecting");
      setTimeout(open, Math.max(delay, holdUntil - Date.now()));
      delay = Math.min(delay * 2, 15000);
    };
  }

  open();
  return {
    close() { stopped = true; if (ws) ws.close(); },
    // Drop the socket as a network failure would, staying away at least `ms` (tests use it
    // to prove that what was sent meanwhile is back-filled from the API).
    drop(ms = 0) { holdUntil = Date.now() + ms; if (ws) ws.close(); },
    get socket() { return ws; },
  };
}
