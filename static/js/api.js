// The JSON API as the pages use it: one place for paths and response shapes.
// Pages call the API with the browser session (same origin), never with a token.

export const paths = {
  series: (run) => `/api/runs/${run}/series`,
  keys: (run) => `/api/runs/${run}/keys`,
  run: (run) => `/api/runs/${run}`,
  job: (job) => `/api/jobs/${job}`,
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export async function getJSON(url, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const qs = query.toString();
  const res = await fetch(qs ? `${url}?${qs}` : url, {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  });
  if (!res.ok) {
    let detail = "";
    try { detail = (await res.json()).detail; } catch (err) { /* not JSON */ }
    throw new ApiError(res.status, detail);
  }
  return res.json();
}

// Accepts the shapes a series may come in and returns {x: number[], y: number[], total}.
export function normalizeSeries(body) {
  if (!body) return { x: [], y: [], total: 0 };
  const total = body.total ?? body.total_points ?? body.count ?? null;
  const pick = (...names) => names.map((n) => body[n]).find((v) => Array.isArray(v));
  const xs = pick("steps", "step", "x");
  const ys = pick("values", "value", "y");
  if (xs && ys) return { x: xs.map(Number), y: ys.map(toNum), total: total ?? xs.length };
  const rows = Array.isArray(body) ? body : pick("points", "data", "series") || [];
  const x = [], y = [];
  for (const row of rows) {
    if (Array.isArray(row)) { x.push(Number(row[0])); y.push(toNum(row[1])); }
    else if (row) { x.push(Number(row.step ?? row.x)); y.push(toNum(row.value ?? row.y)); }
  }
  return { x, y, total: total ?? x.length };
}

function toNum(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === "number") return v;
  const n = Number(v);  // "NaN" / "Infinity" arrive as strings from strict JSON encoders
  return Number.isNaN(n) && v !== "NaN" ? null : n;
}

// One key's points over [start, end], downsampled by the server (MinMaxLTTB) to at most
// `points`: GET /api/runs/<id>/series -> {key, total, downsampled, steps, values}.
export async function fetchSeries(run, key, { start, end, points } = {}) {
  const body = await getJSON(paths.series(run), { key, start, end, max_points: points });
  return normalizeSeries(body);
}

export async function fetchKeys(run) {
  const body = await getJSON(paths.keys(run));
  const keys = Array.isArray(body) ? body : body.keys || [];
  return keys.map((k) => (typeof k === "string" ? k : k.key));
}
