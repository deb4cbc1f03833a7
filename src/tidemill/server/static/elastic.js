// The elastic history: the training group's size over time, read from the job's events.
// The job master says "EpochStarted: epoch N: K workers (...)" whenever the group forms
// again; the controller's event just before it says why (scaled out into idle capacity,
// shrunk or reclaimed for another queue, a replica lost or failed, preempted or requeued).
import { lineChart } from "./charts.js";
import { clock, empty, esc } from "./format.js";

const EPOCH = /^epoch (\d+): (\d+) worker/;
/** Controller and master events that change the group (src/tidemill/controller). */
const CAUSES = new Set([
  "Scheduled", "ScaledOut", "ScaleRequested", "ScalingIn", "ScaledIn", "Shrunk", "Reclaimed", "Preempted",
  "ReplicaFailed", "ReplicaLost", "ReplicaPlaced", "ReplicaKilled", "ReplicaUnresponsive", "Restarting",
  "RendezvousTimeout", "Requeued", "BindFailed",
]);
/** Events that put the whole job back in its queue: the group is gone until placed again. */
const REQUEUES = new Set(["Preempted", "Requeued", "BindFailed"]);

/** [{time, size, epoch, reason, message}] in time order. */
export function sizeChanges(events) {
  const changes = [];
  let cause = null;
  let size = 0;
  for (const e of events) {
    if (CAUSES.has(e.reason)) cause = e;
    if (REQUEUES.has(e.reason)) {
      if (size > 0) changes.push({ time: e.time, size: 0, epoch: null, reason: e.reason, message: e.message, from: size });
      size = 0;
      cause = null;
      continue;
    }
    const m = e.reason === "EpochStarted" && EPOCH.exec(e.message);
    if (!m) continue;
    const next = Number(m[2]);
    const why = !changes.length ? { reason: "Started", message: "" }
      : cause || { reason: next > size ? "Joined" : next < size ? "Left" : "Rendezvous", message: "" };
    changes.push({ time: e.time, size: next, epoch: Number(m[1]), reason: why.reason, message: why.message ? `${why.message} — ${e.message}` : e.message, from: size });
    size = next;
    cause = null;
  }
  return changes;
}

export class ElasticHistory {
  constructor(host) {
    this.host = host;
    this.chart = null;
    this.shown = -1;
  }

  update(events, job) {
    const changes = sizeChanges(events);
    if (!changes.length) {
      this.host.innerHTML = empty(job.phase === "Pending" ? "not started: the group forms once the job is placed" : "no membership epochs yet (the job master announces each one)");
      this.chart = null;
      return;
    }
    if (!this.chart) {
      this.host.innerHTML = `<div class="elastic-chart"></div><div class="scroll short"><table class="changes"><thead><tr><th>time</th><th>size</th><th>why</th><th>what happened</th></tr></thead><tbody></tbody></table></div>`;
      this.chart = lineChart(this.host.querySelector(".elastic-chart"), ["world size"], { time: true, stepped: true, height: 140, value: (v) => (v == null ? "–" : String(Math.round(v))), yRange: (_, min, max) => [0, Math.max(1, max) + 1] });
    }
    const end = job.finished_at || Date.now() / 1000;
    const x = [...changes.map((c) => c.time), end];
    const y = [...changes.map((c) => c.size), changes[changes.length - 1].size];
    this.chart.update(x, [y]);
    if (changes.length !== this.shown) {
      this.shown = changes.length;
      this.host.querySelector(".changes tbody").innerHTML = changes.slice().reverse().map((c) => `<tr>
        <td>${clock(c.time)}</td><td><b>${c.from} → ${c.size}</b></td>
        <td><span class="reason ${c.size < c.from ? "down" : "up"}">${esc(c.reason)}</span></td><td class="muted">${esc(c.message)}</td></tr>`).join("");
    }
  }

  stop() {
    if (this.chart) this.chart.destroy();
  }
}
