// The dashboard's shell: routes the address's fragment to a page, keeps the header's
// status line, and sends a 401 anywhere to the token form.
import { setToken, token } from "./api.js";
import { mountCluster } from "./cluster.js";
import { mountJob } from "./job.js";
import { mountJobs } from "./jobs.js";
import { mountLogin } from "./login.js";

const page = document.getElementById("page");
let stop = null;

/** "#/jobs/ns/name" -> the page that shows it and its arguments. */
function route(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "jobs" && parts.length >= 3) return ["job", mountJob, { namespace: parts[1], name: parts.slice(2).join("/") }];
  if (parts[0] === "cluster") return ["cluster", mountCluster, {}];
  if (parts[0] === "login") return ["login", mountLogin, { next: parts.slice(1).join("/") }];
  return ["jobs", mountJobs, {}];
}

function showWho() {
  const who = document.getElementById("who");
  who.innerHTML = token() ? '<a href="#/login" id="logout">change token</a>' : "";
  const out = document.getElementById("logout");
  if (out) out.onclick = () => { setToken(null); };
}

function render() {
  if (stop) stop();
  const [name, mount, params] = route(location.hash);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === name || (name === "job" && a.dataset.page === "jobs"));
  page.innerHTML = "";
  page.className = `page-${name}`;
  showWho();
  stop = mount(page, params);
}

token();
window.addEventListener("hashchange", render);
render();
