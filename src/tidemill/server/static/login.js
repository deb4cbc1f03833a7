// The token form: a server started with --auth answers 401 without a Bearer token.
import { get, setToken } from "./api.js";
import { esc } from "./format.js";
import { status } from "./live.js";

export function mountLogin(el, { next }) {
  el.innerHTML = `<form class="login card" autocomplete="off">
    <h2>Sign in with a token</h2>
    <p>This server has tokens on. Paste a token (<code>tidemill token create</code>, or
    <code>STATE_DIR/admin-token</code> for the admin). It is kept in this tab only.</p>
    <input type="password" name="token" placeholder="tm_…" aria-label="token" required>
    <button type="submit">Sign in</button>
    <p class="error" role="alert"></p></form>`;
  status("this server needs a token");
  const form = el.querySelector("form");
  const error = el.querySelector(".error");
  form.token.focus();
  form.onsubmit = async (event) => {
    event.preventDefault();
    setToken(form.token.value.trim());
    try {
      await get("/api/v1/jobs");
      location.hash = `#/${next || ""}`;
    } catch (err) {
      setToken(null);
      error.innerHTML = esc(err.message);
    }
  };
  return () => {};
}
