// The jobs page: counts by phase, the newest jobs (a row opens its page), the latest events.
import { get } from "./api.js";
import { age, clock, empty, esc, phase } from "./format.js";
import { every } from "./live.js";

const PHASES = ["Running", "Pending", "Restarting", "Suspended", "Succeeded", "Failed"];
// Rows asked for at each refresh: a server holding 10,000 jobs would send them all every
// 2 s for each open page; the tiles count every job.
const SHOWN = 500;
export const jobHref = (ns, name) => `#/jobs/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;

export function mountJobs(el) {
  el.innerHTML = `
    <div class="tiles" id="tiles"></div>
    <div class="grid-2-1">
      <section class="card"><div class="card-head"><h2>Jobs</h2>
        <input id="filter" type="search" placeholder="filter: name, queue, phase…" aria-label="filter jobs"></div>
        <div class="scroll"><table class="jobs"><thead><tr><th>job</th><th>queue</th><th>prio</th><th>phase</th><th>replicas</th><th>age</th><th>message</th></tr></thead>
        <tbody id="jobs"></tbody></table></div><p class="muted" id="jobs-note"></p></section>
      <section class="card"><h2>Latest events</h2><ol class="timeline" id="events"></ol></section>
    </div>`;
  const filter = el.querySelector("#filter");
  let jobs = [];
  let phases = {};
  let onlyPhase = "";
  let last = "";
  const draw = () => {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = jobs.filter((j) => {
      if (onlyPhase && j.phase !== onlyPhase) return false; // a refresh asked before the click
      const text = `${j.namespace}/${j.name} ${j.queue} ${j.phase} ${j.message}`.toLowerCase();
      return words.every((w) => text.includes(w));
    });
    el.querySelector("#jobs").innerHTML = shown.length
      ? shown.map((j) => `<tr data-href="${jobHref(j.namespace, j.name)}">
        <td><a href="${jobHref(j.namespace, j.name)}">${esc(j.namespace)}/<b>${esc(j.name)}</b></a></td>
        <td>${esc(j.queue)}</td><td>${j.priority}</td><td>${phase(j.phase)}</td>
        <td>${Object.entries(j.replicas).map(([r, c]) => `${esc(r)}&nbsp;${esc(c)}`).join(", ")}</td>
        <td>${age(j.created_at)}</td><td class="muted clip" title="${esc(j.message)}">${esc(j.message)}</td></tr>`).join("")
      : `<tr><td colspan="7">${empty(Object.keys(phases).length ? "no job matches the filter" : "no jobs yet: tidemill submit job.yaml")}</td></tr>`;
  };
  const drawTiles = () => {
    const total = Object.values(phases).reduce((a, b) => a + b, 0);
    el.querySelector("#tiles").innerHTML = `<div class="tile"><b>${total}</b>jobs</div>` +
      PHASES.map((p) => `<button class="tile phase-${p}${p === onlyPhase ? " chosen" : ""}" data-phase="${p}" title="show only ${p.toLowerCase()} jobs"><b>${phases[p] || 0}</b>${p.toLowerCase()}</button>`).join("");
    const matching = onlyPhase ? phases[onlyPhase] || 0 : total;
    el.querySelector("#jobs-note").textContent = matching > jobs.length
      ? `the newest ${jobs.length} of ${matching} ${onlyPhase ? `${onlyPhase.toLowerCase()} ` : ""}jobs (tidemill jobs lists them all)`
      : "";
  };
  filter.oninput = draw;
  el.querySelector("#tiles").onclick = (event) => {
    const tile = event.target.closest("[data-phase]");
    onlyPhase = tile && onlyPhase !== tile.dataset.phase ? tile.dataset.phase : "";
    drawTiles();
    polling.now();
  };
  el.querySelector("#jobs").onclick = (event) => {
    const row = event.target.closest("tr[data-href]");
    if (row && !event.target.closest("a")) location.hash = row.dataset.href;
  };
  const polling = every(2000, async (signal) => {
    const only = onlyPhase ? `&phase=${onlyPhase}` : "";
    const [list, events] = await Promise.all([
      get(`/api/v1/jobs?limit=${SHOWN}&newest=true${only}`, signal),
      get("/api/v1/events?limit=25&newest=true", signal),
    ]);
    // Nothing changed: keep the page (ages still move every 10 s).
    const seen = JSON.stringify([list, events.items.at(-1)?.id, Math.floor(Date.now() / 10000)]);
    if (seen === last) return;
    last = seen;
    jobs = list.items;
    phases = list.phases;
    drawTiles();
    draw();
    el.querySelector("#events").innerHTML = events.items.slice().reverse().map(eventItem).join("") || empty("no events yet");
  });
  return polling;
}

/** One event as a timeline entry (shared with the job page). */
export function eventItem(e, withJob = true) {
  const [ns, name] = (e.job || "").split("/");
  const job = e.job && withJob ? `<a href="${jobHref(ns, name)}">${esc(e.job)}</a> ` : "";
  return `<li class="${e.type === "Warning" ? "warn" : ""}"><time>${clock(e.time)}</time>
    <span class="reason">${esc(e.reason)}</span> ${job}${e.replica ? `<span class="muted">${esc(e.replica)}</span> ` : ""}
    <span class="message">${esc(e.message)}</span></li>`;
}
