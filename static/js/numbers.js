// The one way the browser writes a number for people: the rule of parity/reports/numbers.py,
// checked against the same table (tests/number_style.json). toPrecision and toExponential
// round the exact binary value half away from zero, as the Python side does with Decimal.

const SMALL = 1e-3, LARGE = 1e5;

function plain(text) {
  return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
}

// `digits` significant digits in fixed notation ("0.003407", "16", "12350"), or one fewer in
// scientific notation when the rounded value is below 1e-3 or from 1e5 on ("9.29e-5",
// "1.23e+5"); "NaN", "inf", "-inf"; `missing` for null. Anything else is shown as it is.
export function number(v, digits = 4, missing = "–") {
  if (v === null || v === undefined) return missing;
  if (typeof v !== "number") return String(v);
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  if (v === 0) return "0";
  const rounded = Number(v.toPrecision(digits));
  const a = Math.abs(rounded);
  // Number's own text of a value in [1e-3, 1e5) is always fixed notation.
  if (a >= SMALL && a < LARGE) return String(rounded);
  const [mantissa, exponent] = v.toExponential(Math.max(digits - 2, 0)).split("e");
  return `${plain(mantissa)}e${exponent}`;
}
