// Small helpers shared by the views: building elements, formatting values, polling while visible.

/**
 * Build an element: h("a", {href: "#/", class: "x", onclick: f}, "text", child, [more, children]).
 * Attributes starting with "on" become listeners; false/null/undefined attributes and children are skipped.
 */
export function h(tag, attributes = {}, ...children) {
  const element = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    // Through the CSSOM: the page's Content-Security-Policy refuses style attributes set as markup.
    else if (name === "style") element.style.cssText = String(value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

/** Replace `parent`'s children, skipping null/false ones and flattening arrays, as h() does. */
export function fill(parent, ...children) {
  parent.replaceChildren();
  append(parent, children);
  return parent;
}

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.append(child instanceof Node ? child : String(child));
  }
}

/** A number as people read it: 4 significant digits, integers whole, null as a dash. */
export function formatValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    const magnitude = Math.abs(value);
    if (magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e5)) return value.toExponential(2);
    return String(Number(value.toPrecision(4)));
  }
  return String(value);
}

/** "3 min ago", "2 h ago", or the date; the full time is in the element's title. */
export function formatWhen(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const when = new Date(iso);
  const seconds = (Date.now() - when.getTime()) / 1000;
  let text;
  if (seconds < 45) text = "just now";
  else if (seconds < 3600) text = `${Math.round(seconds / 60)} min ago`;
  else if (seconds < 86400) text = `${Math.round(seconds / 3600)} h ago`;
  else text = when.toLocaleDateString();
  return h("time", { datetime: iso, title: when.toLocaleString() }, text);
}

export const FINISHED_STATES = ["completed", "failed", "pruned", "cancelled"];
export const TRIAL_STATES = ["pending", "running", ...FINISHED_STATES];
export const ACTIVE_SWEEP = ["running", "paused"];

/** Trials that are done, whatever their outcome. */
export function finishedCount(counts) {
  return FINISHED_STATES.reduce((sum, state) => sum + (counts?.[state] ?? 0), 0);
}

/**
 * A progress bar with its "finished / total" text. Given the trial counts, the filled part is split into
 * one segment per finished state (completed, failed, pruned, cancelled), each in its state's colour.
 */
export function progressBar(finished, total, counts = null) {
  const share = total > 0 ? Math.min(1, finished / total) : 0;
  const width = `width: ${(share * 100).toFixed(1)}%`;
  const parts = counts ? FINISHED_STATES.filter((state) => counts[state] > 0) : [];
  const fill = parts.length
    ? h("div", { class: "progress-fill progress-parts", style: width },
      parts.map((state) => h("div", { class: `progress-part part-${state}`, dataset: { state }, style: `flex-grow: ${counts[state]}` })))
    : h("div", { class: "progress-fill", style: width });
  return h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": finished,
    title: parts.length ? parts.map((state) => `${counts[state].toLocaleString("en")} ${state}`).join(", ") : null },
  fill, h("span", { class: "progress-text" }, `${finished.toLocaleString("en")} / ${total.toLocaleString("en")}`,
    counts?.failed > 0 ? h("span", { class: "progress-failed", dataset: { state: "failed" } }, ` · ${counts.failed.toLocaleString("en")} failed`) : null));
}

export function stateBadge(state) {
  return h("span", { class: `badge state-${state}` }, state);
}

/** How many epochs a pruned trial trained: its `pruned_at_epoch` counts from 0, this from 1. Null otherwise. */
export function epochsTrained(trial) {
  return trial?.state === "pruned" && Number.isInteger(trial.pruned_at_epoch) ? trial.pruned_at_epoch + 1 : null;
}

/** A trial's state; a pruned one's reads "pruned @ 3", 3 being the epochs it trained (said in its tooltip). */
export function trialStateBadge(trial) {
  const epochs = epochsTrained(trial);
  if (epochs === null) return stateBadge(trial.state);
  return h("span", {
    class: "badge state-pruned",
    title: `Pruned by the sweep's stopping rule after ${epochs} epoch${epochs === 1 ? "" : "s"} trained `
      + `(its last is epoch ${trial.pruned_at_epoch} on the curves, which count epochs from 0)`,
  }, `pruned @ ${epochs}`);
}

/** The best trial's objective value, per the sweep's spec. */
export function objectiveOf(trial, spec) {
  const metric = spec?.objective?.metric;
  return trial && metric ? trial.metrics?.[metric] ?? null : null;
}

/**
 * Run `task` now and then every `ms` while the tab is visible, one run at a time.
 * Returns a function that stops it. Errors are handed to `onError` and do not stop the polling.
 */
export function poll(task, ms, onError = console.error) {
  let timer = null;
  let stopped = false;
  let running = false;
  const run = async () => {
    clearTimeout(timer);
    if (stopped || running || document.visibilityState !== "visible") return;
    running = true;
    try {
      await task();
    } catch (error) {
      onError(error);
    } finally {
      running = false;
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  const onVisibility = () => { if (document.visibilityState === "visible") run(); };
  document.addEventListener("visibilitychange", onVisibility);
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisibility);
  };
}

/** A message for an error from the API or the network. */
export function errorText(error) {
  if (error?.detail !== undefined && typeof error.detail !== "string") {
    return (error.problems ?? []).map((p) => `${p.path.join(".") || "spec"}: ${p.msg}`).join("; ") || error.message;
  }
  return error?.message ?? String(error);
}
