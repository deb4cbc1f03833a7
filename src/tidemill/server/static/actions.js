// What a job's page may do to the job: suspend, resume and delete it, the same REST calls
// `tidemill suspend|resume|delete` make, with this tab's token. A refusal shows the
// server's own words (a viewer's 403 names what the token lacks).
import { send } from "./api.js";
import { clock } from "./format.js";
import { unauthorized } from "./live.js";

const SUSPENDABLE = new Set(["Pending", "Scheduled", "Running", "Restarting"]);

const ACTIONS = [
  {
    verb: "suspend", label: "Suspend", method: "POST", rest: "/suspend",
    allowed: (job) => SUSPENDABLE.has(job.phase),
    hint: "stop its replicas and hold nothing until resumed; it goes on from its newest checkpoint",
  },
  {
    verb: "resume", label: "Resume", method: "POST", rest: "/resume",
    allowed: (job) => job.phase === "Suspended",
    hint: "queue it again; it goes on from its newest checkpoint",
  },
  {
    verb: "delete", label: "Delete", method: "DELETE", rest: "",
    allowed: () => true,
    hint: "stop its replicas and remove the job",
    confirm: (name) => `Delete job ${name}? Its replicas are stopped and the job is removed.`,
  },
];

export class JobActions {
  /** `path(rest)` is the job's REST path; `refresh()` polls the page at once. */
  constructor(host, name, path, refresh) {
    this.name = name;
    this.path = path;
    this.refresh = refresh;
    this.busy = false;
    this.job = null;
    host.innerHTML = `<span class="action-state muted"></span>`
      + ACTIONS.map((a) => `<button data-verb="${a.verb}" disabled>${a.label}</button>`).join("");
    this.state = host.querySelector(".action-state");
    this.buttons = ACTIONS.map((action) => {
      const button = host.querySelector(`[data-verb=${action.verb}]`);
      button.onclick = () => this.run(action);
      return [action, button];
    });
  }

  update(job) {
    this.job = job;
    for (const [action, button] of this.buttons) {
      const allowed = action.allowed(job);
      button.disabled = this.busy || !allowed;
      button.title = allowed ? action.hint : `not while it is ${job.phase}`;
    }
  }

  async run(action) {
    if (action.confirm && !window.confirm(action.confirm(this.name))) return;
    this.busy = true;
    this.say(`${action.verb}: asking…`);
    if (this.job) this.update(this.job);
    try {
      await send(action.method, this.path(action.rest));
      if (action.verb === "delete") {
        location.hash = "#/";
        return;
      }
      this.say(`${action.verb}: asked at ${clock(Date.now() / 1000)}`);
    } catch (err) {
      if (!unauthorized(err)) this.say(`cannot ${action.verb}: ${err.message}`, true);
    } finally {
      this.busy = false;
    }
    this.refresh();
  }

  say(text, bad = false) {
    this.state.textContent = text;
    this.state.classList.toggle("warn", bad);
  }
}
