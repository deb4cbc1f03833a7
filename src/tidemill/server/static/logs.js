// A job's logs: one replica or all (lines led by "[role-index] "), the last lines first,
// then followed live through the server's follow stream; a search keeps matching lines.
import { stream } from "./api.js";
import { esc } from "./format.js";
import { unauthorized } from "./live.js";

const TAIL_LINES = 1000;
const KEEP_LINES = 5000;

export class LogView {
  constructor(host, path) {
    this.path = path;
    host.innerHTML = `<div class="card-head"><h2>Logs</h2>
      <select id="log-replica" aria-label="replica"><option value="">all replicas</option></select>
      <input id="log-search" type="search" placeholder="search" aria-label="search logs">
      <label class="check"><input type="checkbox" id="log-follow" checked> follow</label>
      <span class="muted" id="log-state"></span></div>
      <pre class="log" id="log-lines" tabindex="0"></pre>`;
    this.picker = host.querySelector("#log-replica");
    this.search = host.querySelector("#log-search");
    this.follow = host.querySelector("#log-follow");
    this.state = host.querySelector("#log-state");
    this.pre = host.querySelector("#log-lines");
    this.known = "";
    this.mode = "";
    this.lines = [];
    this.partial = "";
    this.abort = null;
    this.queued = false;
    this.picker.onchange = () => this.open();
    this.follow.onchange = () => this.open();
    this.search.oninput = () => this.draw();
    this.open();
  }

  /** Keep the replica list in step with the job's replicas. */
  replicas(job) {
    const names = job.replicas.map((r) => `${r.role}-${r.index}`);
    const key = names.join(",");
    if (key === this.known) return;
    this.known = key;
    const chosen = this.picker.value;
    this.picker.innerHTML = `<option value="">all replicas</option>` +
      names.map((n) => `<option value="${esc(n)}">${esc(n)}</option>`).join("");
    this.picker.value = names.includes(chosen) ? chosen : "";
  }

  select(replica) {
    if (![...this.picker.options].some((o) => o.value === replica)) {
      this.picker.insertAdjacentHTML("beforeend", `<option value="${esc(replica)}">${esc(replica)}</option>`);
    }
    this.picker.value = replica;
    this.open();
    this.pre.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  stop() {
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  async open() {
    this.stop();
    const abort = new AbortController();
    this.abort = abort;
    this.lines = [];
    this.partial = "";
    this.draw();
    const replica = this.picker.value;
    const dash = replica.lastIndexOf("-");
    const which = replica ? `&role=${encodeURIComponent(replica.slice(0, dash))}&index=${replica.slice(dash + 1)}` : "";
    const follow = this.follow.checked;
    this.say(follow ? "following…" : "");
    try {
      await stream(`${this.path("/logs")}${which}&tailLines=${TAIL_LINES}${follow ? "&follow=true" : ""}`, (text) => this.add(text), abort.signal);
      if (this.abort === abort) this.say(follow ? "the job ended: no more lines" : `${this.lines.length} lines (follow is off)`);
    } catch (err) {
      if (abort.signal.aborted || unauthorized(err)) return;
      this.say(`cannot read logs: ${err.message}`);
    }
  }

  /** What the stream is doing (shown unless a search is counting matches). */
  say(mode) {
    this.mode = mode;
    if (!this.search.value.trim()) this.state.textContent = mode;
  }

  add(text) {
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop();
    this.lines.push(...parts);
    if (this.lines.length > KEEP_LINES) this.lines.splice(0, this.lines.length - KEEP_LINES);
    if (!this.queued) {
      this.queued = true;
      requestAnimationFrame(() => { this.queued = false; this.draw(); });
    }
  }

  draw() {
    const term = this.search.value.trim().toLowerCase();
    const all = this.partial ? [...this.lines, this.partial] : this.lines;
    const shown = term ? all.filter((l) => l.toLowerCase().includes(term)) : all;
    const mark = (line) => {
      const safe = esc(line);
      if (!term) return safe;
      return safe.replace(new RegExp(esc(term).replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "gi"), (m) => `<mark>${m}</mark>`);
    };
    const atEnd = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 24;
    this.pre.innerHTML = shown.length ? shown.map(mark).join("\n")
      : `<span class="muted">${term ? "no line matches" : "no log lines yet"}</span>`;
    if (this.follow.checked && atEnd) this.pre.scrollTop = this.pre.scrollHeight;
    this.state.textContent = term ? `${shown.length} of ${all.length} lines match` : this.mode;
  }
}
