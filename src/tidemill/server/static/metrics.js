// Training metrics as charts: one chart per metric (loss and samples/s first), one line
// per replica (rank), x the step. Polled incrementally: reports after the last step seen.
import { get } from "./api.js";
import { lineChart } from "./charts.js";
import { empty, esc } from "./format.js";

const FIRST = ["loss", "samples_per_s", "step_time_s"];
const ACTIVE_S = 30;
const UNITS = { samples_per_s: "samples/s", step_time_s: "seconds per step" };

const order = (a, b) => {
  const ia = FIRST.indexOf(a), ib = FIRST.indexOf(b);
  if (ia !== ib) return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
  return a.localeCompare(b);
};
const byRank = (a, b) => a.localeCompare(b, undefined, { numeric: true });

export class MetricCharts {
  constructor(host, note, path) {
    this.host = host;
    this.note = note;
    this.path = path;
    this.series = new Map(); // metric -> replica -> step -> value
    this.last = new Map(); // replica -> [last step, its time]
    this.charts = new Map(); // metric -> {chart, replicas key}
    this.host.innerHTML = empty("no metrics yet: training code reports them with tidemill.runtime.report(step, loss=...)");
  }

  /** Steps after which to ask: the lowest last step of the replicas still reporting,
   * so a rank behind the others is not skipped (repeats are merged by step). */
  since() {
    if (!this.last.size) return -1;
    const newest = Math.max(...[...this.last.values()].map(([, t]) => t));
    const active = [...this.last.values()].filter(([, t]) => t >= newest - ACTIVE_S);
    return Math.min(...active.map(([s]) => s));
  }

  async poll(signal) {
    const found = await get(`${this.path("/metrics")}&sinceStep=${this.since()}`, signal);
    let grew = false;
    for (const point of found.items) {
      const [step] = this.last.get(point.replica) || [-1];
      if (point.step > step) this.last.set(point.replica, [point.step, point.time]);
      for (const [name, value] of Object.entries(point.values)) {
        if (!this.series.has(name)) this.series.set(name, new Map());
        const perReplica = this.series.get(name);
        if (!perReplica.has(point.replica)) perReplica.set(point.replica, new Map());
        const steps = perReplica.get(point.replica);
        if (steps.get(point.step) !== value) { steps.set(point.step, value); grew = true; }
      }
    }
    if (grew) this.draw();
    if (found.items.length || this.last.size) {
      const latest = found.latest.filter((l) => l.name === "loss").sort((a, b) => byRank(a.replica, b.replica));
      this.note.innerHTML = latest.length ? `latest loss ${latest.map((l) => `${esc(l.replica)} <b>${+l.value.toPrecision(4)}</b> @ step ${l.step}`).join(" · ")}` : "";
    }
  }

  draw() {
    if (!this.charts.size) this.host.innerHTML = `<div class="charts"></div>`;
    const grid = this.host.querySelector(".charts");
    for (const name of [...this.series.keys()].sort(order)) {
      const perReplica = this.series.get(name);
      const replicas = [...perReplica.keys()].sort(byRank);
      const key = replicas.join(",");
      let entry = this.charts.get(name);
      if (!entry || entry.key !== key) {
        if (entry) entry.chart.destroy();
        const cell = entry?.cell || document.createElement("figure");
        if (!entry) {
          cell.className = "metric";
          cell.dataset.metric = name;
          cell.innerHTML = `<figcaption>${esc(name)}${UNITS[name] ? ` <span class="muted">${UNITS[name]}</span>` : ""}</figcaption>`;
          grid.append(cell);
        }
        entry = { cell, key, chart: lineChart(cell, replicas, { height: 170 }) };
        this.charts.set(name, entry);
      }
      const steps = [...new Set(replicas.flatMap((r) => [...perReplica.get(r).keys()]))].sort((a, b) => a - b);
      entry.cell.dataset.points = String(steps.length);
      entry.chart.update(steps, replicas.map((r) => steps.map((s) => perReplica.get(r).get(s) ?? null)));
    }
  }

  stop() {
    for (const { chart } of this.charts.values()) chart.destroy();
    this.charts.clear();
  }
}
