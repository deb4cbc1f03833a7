// Where every rank stands now: the server collects each replica's Python stacks
// (py-spy, else the runtime's faulthandler dump) and groups ranks by their main thread.
import { get } from "./api.js";
import { clock, empty, esc } from "./format.js";
import { unauthorized } from "./live.js";

export class StacksPanel {
  constructor(host, path) {
    this.path = path;
    host.innerHTML = `<div class="card-head"><h2>Stacks</h2>
      <button id="stacks-go" disabled>Collect stacks</button><span class="muted" id="stacks-state">ranks grouped by where they stand (for a job that hangs or crawls)</span></div>
      <div id="stacks-groups"></div>`;
    this.button = host.querySelector("#stacks-go");
    this.state = host.querySelector("#stacks-state");
    this.groups = host.querySelector("#stacks-groups");
    this.button.onclick = () => this.collect();
  }

  running(yes) {
    this.button.disabled = !yes;
    this.button.title = yes ? "" : "only a running job has stacks";
  }

  async collect() {
    this.button.disabled = true;
    this.state.textContent = "collecting…";
    try {
      const report = await get(this.path("/stacks"));
      this.state.textContent = `collected at ${clock(Date.now() / 1000)} from ${report.replicas.length} replicas`;
      this.groups.innerHTML = report.groups.map((g) => `<details class="stack-group" open>
        <summary><b>${esc(g.label)}</b> <span class="count">${g.replicas.length}</span> ${esc(g.summary)}</summary>
        ${g.frames.length ? `<pre>${g.frames.map((f) => `${esc(f.function)}  <span class="muted">${esc(f.file)}:${f.line}</span>`).join("\n")}</pre>` : ""}
        </details>`).join("") || empty("no running replica to read");
    } catch (err) {
      if (!unauthorized(err)) this.state.textContent = `cannot collect stacks: ${err.message}`;
    } finally {
      this.button.disabled = false;
    }
  }
}
