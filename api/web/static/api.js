// The REST API as the page uses it: JSON (or YAML) in, JSON out, errors as ApiError.
// When the server answers 401 the login dialog opens; the call is sent again once a token is accepted.
// The token is posted once to /api/v1/session, which keeps it in an HttpOnly cookie: this page never holds it.

export const API = "/api/v1";

export class ApiError extends Error {
  /** @param {number} status @param {unknown} detail  FastAPI's `detail`: a message, or a list of problems */
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }

  /** The problems of a 422 as [{path, msg}], path without the leading "body"; [] for other errors. */
  get problems() {
    if (!Array.isArray(this.detail)) return [];
    return this.detail.map((problem) => ({
      path: (problem.loc ?? []).filter((part, i) => !(i === 0 && part === "body")).map(String),
      msg: problem.msg ?? String(problem),
    }));
  }
}

let loginInProgress = null;

/** A request index.html started before the modules loaded, for this path; used once (a retry fetches anew). */
function takeEarly(path) {
  const early = window.sweeperEarly?.[path];
  if (!early) return null;
  delete window.sweeperEarly[path];
  return early;
}

/**
 * Call the API. `json` or `yaml` sends a body. Resolves with the parsed answer (null for 204).
 * @param {string} path  e.g. "/sweeps?limit=50"
 * @param {{method?: string, json?: unknown, yaml?: string, signal?: AbortSignal}} [options]
 */
export async function api(path, { method = "GET", json, yaml, signal } = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (yaml !== undefined) {
      headers["Content-Type"] = "application/yaml";
      body = yaml;
    }
    const early = method === "GET" ? takeEarly(path) : null;
    const response = await (early ?? fetch(API + path, { method, headers, body, signal, credentials: "same-origin" }));
    if (response.status === 401) {
      await login();
      continue;
    }
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data?.detail ?? response.statusText);
    return data;
  }
}

/** Resolves once the user has logged in; every call that got a 401 meanwhile waits for the same login. */
export function login() {
  loginInProgress ??= askForToken().finally(() => { loginInProgress = null; });
  return loginInProgress;
}

function askForToken() {
  const dialog = /** @type {HTMLDialogElement} */ (document.getElementById("login"));
  const form = /** @type {HTMLFormElement} */ (document.getElementById("login-form"));
  const error = document.getElementById("login-error");
  return new Promise((resolve) => {
    const onSubmit = async (event) => {
      event.preventDefault();
      error.textContent = "";
      const token = form.elements.namedItem("token").value;
      const response = await fetch(API + "/session", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }),
      }).catch((failure) => ({ ok: false, status: 0, statusText: String(failure) }));
      if (!response.ok) {
        error.textContent = response.status === 401 ? "That token is not valid." : `Login failed: ${response.status || response.statusText}`;
        return;
      }
      // The worker token logs in too, but can read nothing: say so instead of failing on every call.
      const session = await fetch(API + "/session", { credentials: "same-origin" }).then((r) => r.json()).catch(() => null);
      if (session?.role === "worker") {
        await logout();
        error.textContent = "That is the worker token; this page needs the admin token.";
        return;
      }
      form.reset();
      form.removeEventListener("submit", onSubmit);
      dialog.close();
      document.dispatchEvent(new CustomEvent("sweeper:login"));
      resolve();
    };
    form.addEventListener("submit", onSubmit);
    // The page shows nothing without a token: the dialog stays until one is accepted.
    dialog.oncancel = (event) => event.preventDefault();
    dialog.showModal();
    form.elements.namedItem("token").focus();
  });
}

export async function logout() {
  await fetch(API + "/session", { method: "DELETE", credentials: "same-origin" });
}
