// The REST API as the dashboard calls it: the Bearer token of this tab, the server's
// error messages kept whole (a 403 says what the token lacks), and follow streams.

const TOKEN_KEY = "tidemill-token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The token of this tab: sessionStorage, so it leaves with the tab. `/#token=T` still
 * logs in (the fragment never reaches the server) and is removed from the address. */
export function token() {
  const m = location.hash.match(/[#&]token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function failure(response) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    message = body?.error?.message || message;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

/** GET a JSON document; ApiError with the server's message otherwise. */
export async function get(path, signal) {
  const response = await fetch(path, { headers: headers(), signal });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** Ask for a change (POST, DELETE) with this tab's token; the server's answer, or
 * ApiError with its message (a 403 says what the token lacks). */
export async function send(method, path) {
  const response = await fetch(path, { method, headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** Read a text stream (a followed log) chunk by chunk until it ends or `signal` aborts. */
export async function stream(path, onText, signal) {
  const response = await fetch(path, { headers: headers(), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
}

export const jobPath = (ns, name, rest = "") =>
  `/api/v1/jobs/${encodeURIComponent(name)}${rest}?namespace=${encodeURIComponent(ns)}`;
