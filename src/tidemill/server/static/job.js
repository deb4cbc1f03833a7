// One job's page (#/jobs/NAMESPACE/NAME): status, replicas and their use, training
// metrics, logs, events, elastic history, data insight and stacks, all live.
import { JobActions } from "./actions.js";
import { ApiError, get, jobPath } from "./api.js";
import { age, bytes, clock, duration, empty, esc, notice, num, phase } from "./format.js";
import { ElasticHistory } from "./elastic.js";
import { eventItem } from "./jobs.js";
import { every, status } from "./live.js";
import { LogView } from "./logs.js";
import { MetricCharts } from "./metrics.js";
import { StacksPanel } from "./stacks.js";

const FIRST_EVENTS = 2000;
const KEEP_EVENTS = 5000;

export function mountJob(el, { namespace, name }) {
  el.innerHTML = `
    <div class="job-head card"><div class="actions" id="actions"></div><div id="summary"></div></div>
    <section class="card"><h2>Replicas</h2><div class="scroll"><table class="replicas"><thead><tr>
      <th>replica</th><th>phase</th><th>node</th><th>pid / pod</th><th>restarts</th><th>cpu</th><th>memory</th><th>gpu</th><th>started</th><th>message</th>
      </tr></thead><tbody id="replicas"></tbody></table></div></section>
    <section class="card"><div class="card-head"><h2>Training metrics</h2><span class="muted" id="metrics-note"></span></div><div id="metrics"></div></section>
    <div class="grid-2-1">
      <section class="card" id="logs"></section>
      <section class="card"><h2>Events</h2><ol class="timeline" id="events"></ol></section>
    </div>
    <div class="grid-1-1 fold">
      <section class="card"><h2>Elastic history</h2><div id="elastic"></div></section>
      <section class="card"><h2>Data</h2><div id="data"></div></section>
    </div>
    <section class="card" id="stacks"></section>`;
  const path = (rest = "") => jobPath(namespace, name, rest);
  const logs = new LogView(el.querySelector("#logs"), path);
  const metrics = new MetricCharts(el.querySelector("#metrics"), el.querySelector("#metrics-note"), path);
  const elastic = new ElasticHistory(el.querySelector("#elastic"));
  const stacks = new StacksPanel(el.querySelector("#stacks"), path);
  const actions = new JobActions(el.querySelector("#actions"), name, path, () => stopPolling.now());
  const events = [];
  let lastEvent = 0;
  let failed = false;

  const stopPolling = every(2000, async (signal) => {
    let job;
    try {
      job = await get(path(), signal);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status === 401) throw err;
      // 403 (not this token's) or 404: the server's own words, not an empty page.
      failed = true;
      el.innerHTML = notice(err.status === 403 ? "Not allowed" : "Cannot show this job", err.message);
      status(`${namespace}/${name}: HTTP ${err.status}`, true);
      stopAll();
      return;
    }
    // The newest events on opening, then each poll only those after the last one seen.
    const page = lastEvent ? `since=${lastEvent}&limit=1000` : `limit=${FIRST_EVENTS}&newest=true`;
    const fresh = await get(`/api/v1/events?job=${encodeURIComponent(`${namespace}/${name}`)}&${page}`, signal);
    events.push(...fresh.items);
    if (events.length > KEEP_EVENTS) events.splice(0, events.length - KEEP_EVENTS);
    if (fresh.items.length) lastEvent = fresh.items[fresh.items.length - 1].id;
    drawSummary(el.querySelector("#summary"), job);
    actions.update(job);
    drawReplicas(el.querySelector("#replicas"), job, (replica) => logs.select(replica));
    drawData(el.querySelector("#data"), job.data);
    if (fresh.items.length || !events.length) {
      el.querySelector("#events").innerHTML = events.slice(-200).reverse().map((e) => eventItem(e, false)).join("") || empty("no events yet");
    }
    elastic.update(events, job);
    logs.replicas(job);
    stacks.running(job.phase === "Running");
    await metrics.poll(signal);
  });
  const stopAll = () => { stopPolling(); logs.stop(); metrics.stop(); elastic.stop(); };
  return () => { if (!failed) stopAll(); };
}

function drawSummary(host, job) {
  const pending = job.pending_reason
    ? `<div class="pending"><b>Why pending: ${esc(job.pending_reason.code)}</b> ${esc(job.pending_reason.message)}</div>` : "";
  const conditions = job.conditions.map((c) =>
    `<span class="chip ${c.status ? "on" : "off"}" title="${esc(c.message)} (${clock(c.last_transition_time)})">${esc(c.type)}${c.reason ? `: ${esc(c.reason)}` : ""}</span>`).join("");
  const desired = Object.entries(job.desired).map(([r, n]) => `${esc(r)} ×${n}`).join(", ");
  const ran = job.started_at ? duration((job.finished_at || Date.now() / 1000) - job.started_at) : "–";
  host.innerHTML = `<div class="title"><a href="#/" class="muted">jobs</a> / <span class="muted">${esc(job.namespace)}</span> / <h1>${esc(job.name)}</h1> ${phase(job.phase)}</div>
    <dl class="facts"><div><dt>queue</dt><dd>${esc(job.queue)}</dd></div><div><dt>priority</dt><dd>${job.priority}</dd></div>
      <div><dt>mode</dt><dd>${esc(job.mode)}</dd></div><div><dt>replicas</dt><dd>${desired}</dd></div>
      <div><dt>created</dt><dd>${age(job.created_at)} ago</dd></div><div><dt>running for</dt><dd>${ran}</dd></div></dl>
    ${job.message && job.message !== job.pending_reason?.message ? `<p class="message">${esc(job.message)}</p>` : ""}
    ${pending}<div class="chips">${conditions}</div>`;
}

function gpuCell(replica) {
  const gpus = replica.usage?.gpus || [];
  if (!gpus.length) return replica.gpus.length ? `<span class="muted">gpu ${esc(replica.gpus.join(","))}</span>` : "–";
  return gpus.map((g) => `<div class="gpu">#${g.index} ${g.utilization_percent == null ? "–" : `${num(g.utilization_percent, 0)}%`} · ${bytes(g.memory_bytes)}</div>`).join("");
}

function drawReplicas(host, job, onPick) {
  host.innerHTML = job.replicas.length ? job.replicas.map((r) => {
    const name = `${r.role}-${r.index}`;
    const started = r.started_at ? `${age(r.started_at)} ago` : "–";
    return `<tr><td><a href="#" data-replica="${esc(name)}" title="show its log">${esc(name)}</a></td>
      <td>${phase(r.phase)}</td><td>${esc(r.node || "–")}</td><td>${esc(r.pod ?? r.pid ?? "–")}</td>
      <td class="${r.restarts ? "warn" : ""}">${r.restarts}</td>
      <td>${r.usage?.cpu_cores == null ? "–" : `${num(r.usage.cpu_cores)} cores`}</td>
      <td>${r.usage ? bytes(r.usage.memory_bytes) : "–"}</td><td>${gpuCell(r)}</td>
      <td>${started}</td><td class="muted clip" title="${esc(r.message)}">${esc(r.message || (r.exit_code != null ? `exit ${r.exit_code}` : ""))}</td></tr>`;
  }).join("") : `<tr><td colspan="10">${empty(job.phase === "Pending" ? "no replicas yet: the job waits for room (see why above)" : job.phase === "Suspended" ? "no replicas: the job is suspended (tidemill resume queues it again)" : "no replicas")}</td></tr>`;
  for (const a of host.querySelectorAll("a[data-replica]")) {
    a.onclick = (event) => { event.preventDefault(); onPick(a.dataset.replica); };
  }
}

function drawData(host, data) {
  // A job that reads no data through tidemill.data leaves the row to its elastic history.
  const none = !data || !data.stages.length;
  host.closest("section").hidden = none;
  if (none) return;
  host.innerHTML = data.stages.map((stage) => `<div class="stage">
    <h3>${esc(stage.name)} <span class="badge state-${esc(stage.state)}">${esc(stage.state)}</span>
      <span class="muted">pass ${stage.pass_index + 1} of ${stage.epochs}</span></h3>
    <table><thead><tr><th>source</th><th>records</th><th>records/s</th><th>lag</th><th>shards</th></tr></thead><tbody>
    ${stage.sources.map((s) => {
      const total = s.shards_done + s.shards_in_flight + s.shards_pending;
      const lag = s.lag_records == null ? "–" : `${num(s.lag_records)} rec${s.lag_s == null ? "" : ` · ${duration(s.lag_s)}`}`;
      return `<tr><td>${esc(s.name)} <span class="muted">${esc(s.kind)}</span></td><td>${num(s.records)}</td>
        <td>${num(s.records_per_s, 1)}</td><td>${lag}</td>
        <td><span class="shards" title="${s.shards_done} done, ${s.shards_in_flight} in flight, ${s.shards_pending} pending">
          <i class="done" style="flex:${s.shards_done}"></i><i class="flight" style="flex:${s.shards_in_flight}"></i><i class="todo" style="flex:${s.shards_pending}"></i></span>
          ${s.shards_done}/${total}</td></tr>`;
    }).join("")}</tbody></table></div>`).join("");
}
