// Live updates: each page polls what changed since its last look on a timer that stops
// with the page; a 401 sends the tab to the token form, other errors show in the header.
import { ApiError } from "./api.js";

export function unauthorized(err) {
  if (err instanceof ApiError && err.status === 401) {
    const here = location.hash.replace(/^#\/?/, "");
    if (!here.startsWith("login")) location.hash = `#/login/${here}`;
    return true;
  }
  return false;
}

export function status(text, bad = false) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.classList.toggle("bad", bad);
}

/** Run `tick` now and `ms` after each run ends, until the returned stop is called
 * (its `now()` runs it at once). `tick` gets an AbortSignal; an error it throws is shown
 * (or logs in on 401) and the next run still comes, so a server restart heals by itself. */
export function every(ms, tick) {
  const abort = new AbortController();
  let timer = null;
  let busy = false;
  const run = async () => {
    busy = true;
    clearTimeout(timer);
    try {
      await tick(abort.signal);
      if (abort.signal.aborted) return;
      status(`live · updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      if (abort.signal.aborted) return;
      if (unauthorized(err)) return;
      status(`cannot refresh: ${err.message}`, true);
    }
    busy = false;
    if (!abort.signal.aborted) timer = setTimeout(run, ms);
  };
  run();
  const stop = () => { abort.abort(); clearTimeout(timer); };
  /** Run now (a setting changed) unless a run is under way. */
  stop.now = () => { if (!busy && !abort.signal.aborted) run(); };
  return stop;
}
