// The cluster page: use over time per resource and per queue (allocated beside capacity,
// DRF shares), the pending jobs and why, queues, and nodes with each GPU's use.
import { get } from "./api.js";
import { colour, lineChart } from "./charts.js";
import { age, bar, bytes, empty, esc, num } from "./format.js";
import { jobHref } from "./jobs.js";
import { every } from "./live.js";

const WINDOWS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
const RESOURCES = [["cpu", "CPU cores", num], ["memory", "memory", bytes], ["gpu", "GPUs", num]];
const PENDING_SHOWN = 25;

export function mountCluster(el) {
  el.innerHTML = `
    <section class="card"><div class="card-head"><h2>Utilisation</h2>
      <span class="windows">${Object.keys(WINDOWS).map((w) => `<button data-window="${w}" class="${w === "1h" ? "on" : ""}">${w}</button>`).join("")}</span>
      <span class="muted" id="util-note"></span></div>
      <div class="charts three" id="resources"></div>
      <div class="charts three" id="queue-charts"></div></section>
    <div class="grid-1-1">
      <section class="card"><h2>Pending jobs and why</h2><div id="pending"></div></section>
      <section class="card"><h2>Queues</h2><div class="scroll"><table><thead><tr><th>queue</th><th>weight</th><th>DRF share</th><th>running</th><th>pending</th><th>cpu</th><th>memory</th><th>gpu</th></tr></thead><tbody id="queues"></tbody></table></div></section>
    </div>
    <section class="card"><h2>Nodes</h2><div class="scroll"><table><thead><tr><th>node</th><th>cpu</th><th>memory</th><th>gpu</th><th>per GPU (share in use)</th></tr></thead><tbody id="nodes"></tbody></table></div></section>`;
  let seconds = WINDOWS["1h"];
  const resourceCharts = RESOURCES.map(([key, title, value]) => {
    const cell = figure(el.querySelector("#resources"), title);
    return [key, lineChart(cell, ["allocated", "capacity"], { time: true, height: 150, value, dashed: ["capacity"], colours: { capacity: "#8c959f" } })];
  });
  const queueCharts = { key: "", charts: [] };
  for (const button of el.querySelectorAll("[data-window]")) {
    button.onclick = () => {
      seconds = WINDOWS[button.dataset.window];
      for (const b of el.querySelectorAll("[data-window]")) b.classList.toggle("on", b === button);
      polling.now();
    };
  }
  const polling = every(3000, async (signal) => {
    const [util, queues, nodes, jobs] = await Promise.all([
      get(`/api/v1/cluster/utilization?seconds=${seconds}&points=400`, signal),
      get("/api/v1/queues", signal),
      get("/api/v1/nodes", signal),
      get(`/api/v1/jobs?phase=Pending&limit=${PENDING_SHOWN}`, signal),
    ]);
    const points = util.items;
    const x = points.map((p) => p.time);
    for (const [key, chart] of resourceCharts) chart.update(x, [points.map((p) => p.allocated[key]), points.map((p) => p.capacity[key])]);
    el.querySelector("#util-note").textContent = points.length
      ? `${points.length} samples since ${new Date(points[0].time * 1000).toLocaleTimeString()}`
      : "no samples yet (the server takes one every 15 s)";
    drawQueueCharts(el.querySelector("#queue-charts"), queueCharts, points, queues.items.map((q) => q.name));
    drawQueues(el.querySelector("#queues"), queues.items);
    drawNodes(el.querySelector("#nodes"), nodes.items);
    drawPending(el.querySelector("#pending"), jobs.items, jobs.phases.Pending || 0);
  });
  return () => { polling(); for (const [, c] of resourceCharts) c.destroy(); for (const c of queueCharts.charts) c.destroy(); };
}

function figure(host, title) {
  const cell = document.createElement("figure");
  cell.className = "metric";
  cell.innerHTML = `<figcaption>${esc(title)}</figcaption>`;
  host.append(cell);
  return cell;
}

function drawQueueCharts(host, state, points, names) {
  const key = names.join(",");
  if (key !== state.key) {
    for (const c of state.charts) c.destroy();
    host.innerHTML = "";
    const colours = Object.fromEntries(names.map((n, i) => [n, colour(i)]));
    state.charts = [
      lineChart(figure(host, "DRF share per queue (dominant share ÷ weight)"), names, { time: true, height: 150, colours }),
      lineChart(figure(host, "GPUs held per queue"), names, { time: true, height: 150, colours, value: num }),
      lineChart(figure(host, "CPU cores held per queue"), names, { time: true, height: 150, colours, value: num }),
    ];
    state.key = key;
  }
  const x = points.map((p) => p.time);
  const of = (name, pick) => points.map((p) => (p.queues[name] ? pick(p.queues[name]) : null));
  state.charts[0].update(x, names.map((n) => of(n, (q) => q.dominant_share)));
  state.charts[1].update(x, names.map((n) => of(n, (q) => q.allocated.gpu)));
  state.charts[2].update(x, names.map((n) => of(n, (q) => q.allocated.cpu)));
}

function drawQueues(host, queues) {
  const most = Math.max(1, ...queues.map((q) => q.dominant_share));
  host.innerHTML = queues.map((q) => {
    const cap = (r) => (q.max[r] == null ? "" : ` / max ${r === "memory" ? bytes(q.max[r]) : num(q.max[r])}`);
    return `<tr><td><b>${esc(q.name)}</b></td><td>${num(q.weight)}</td>
      <td>${bar(q.dominant_share, most, q.dominant_share.toFixed(3))}</td><td>${q.running}</td><td class="${q.pending ? "warn" : ""}">${q.pending}${q.suspended ? `<br><span class="muted">${q.suspended} suspended</span>` : ""}</td>
      <td>${num(q.allocated.cpu)}${cap("cpu")}</td><td>${bytes(q.allocated.memory)}${cap("memory")}</td><td>${num(q.allocated.gpu)}${cap("gpu")}</td></tr>`;
  }).join("") || `<tr><td colspan="8">${empty("no queues")}</td></tr>`;
}

function drawNodes(host, nodes) {
  host.innerHTML = nodes.map((n) => `<tr class="${n.schedulable ? "" : "muted"}">
    <td><b>${esc(n.name)}</b>${n.gpu_model ? ` <span class="muted">${esc(n.gpu_model)}</span>` : ""}${n.schedulable ? "" : ' <span class="badge">cordoned</span>'}</td>
    <td>${bar(n.allocated.cpu, n.capacity.cpu)}</td>
    <td>${bar(n.allocated.memory, n.capacity.memory, `${bytes(n.allocated.memory)}/${bytes(n.capacity.memory)}`)}</td>
    <td>${bar(n.allocated.gpu, n.capacity.gpu)}</td>
    <td class="devices">${n.gpu_used.map((u, i) => `<span class="device" title="GPU ${i}: ${(u * 100).toFixed(0)}% allocated"><i style="height:${Math.min(100, u * 100).toFixed(0)}%"></i><b>${i}</b></span>`).join("") || '<span class="muted">no GPUs</span>'}</td></tr>`).join("")
    || `<tr><td colspan="5">${empty("no nodes")}</td></tr>`;
}

function drawPending(host, shown, waiting) {
  if (!shown.length) {
    host.innerHTML = empty("no job is waiting");
    return;
  }
  host.innerHTML = `<ul class="pending-list">${shown.map((j) => {
    const reason = j.pending_reason;
    return `<li><a href="${jobHref(j.namespace, j.name)}">${esc(j.namespace)}/<b>${esc(j.name)}</b></a>
      <span class="muted">${esc(j.queue)} · waiting ${age(j.created_at)}</span>
      <div><span class="reason">${esc(reason?.code || "Queued")}</span> ${esc(reason?.message || j.message || "waiting for the scheduler")}</div></li>`;
  }).join("")}</ul>${waiting > shown.length ? `<p class="muted">and ${waiting - shown.length} more</p>` : ""}`;
}
