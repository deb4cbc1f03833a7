// Small text helpers shared by the pages: escaping, units, times, badges and bars.

export const esc = (v) =>
  String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

export function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function num(n, digits = 2) {
  if (n == null || Number.isNaN(n)) return "–";
  const a = Math.abs(n);
  if (a >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  if (Number.isInteger(n)) return String(n);
  return n.toFixed(a >= 100 ? 0 : digits);
}

export function duration(s) {
  if (s == null) return "–";
  s = Math.max(0, s);
  if (s < 10) return `${s.toFixed(s < 1 ? 1 : 0)}s`;
  if (s < 90) return `${s.toFixed(0)}s`;
  if (s < 5400) return `${(s / 60).toFixed(0)}m`;
  if (s < 172800) return `${(s / 3600).toFixed(1)}h`;
  return `${(s / 86400).toFixed(1)}d`;
}

export const age = (t) => (t == null ? "–" : duration(Date.now() / 1000 - t));
export const clock = (t) => (t == null ? "–" : new Date(t * 1000).toLocaleTimeString());

export const phase = (p) => `<span class="badge phase-${esc(p)}">${esc(p)}</span>`;

/** A horizontal bar of `used` out of `total`, with the numbers beside it. */
export function bar(used, total, label = `${num(used)}/${num(total)}`) {
  const pct = total ? Math.min(100, (100 * used) / total) : 0;
  const level = pct >= 90 ? "hot" : pct >= 60 ? "warm" : "";
  return `<span class="bar ${level}"><i style="width:${pct.toFixed(1)}%"></i></span><span class="bar-label">${esc(label)}</span>`;
}

/** A page's one message when it cannot show what was asked (403, 404, no server). */
export const notice = (title, message) =>
  `<div class="notice"><h2>${esc(title)}</h2><p>${esc(message)}</p></div>`;

export const empty = (text) => `<p class="empty">${esc(text)}</p>`;
