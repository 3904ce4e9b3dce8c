// The sweeps list: name, state, progress, best objective, start time; a page at a time, kept live by polling.

import { api } from "./api.js";
import { errorText, finishedCount, formatValue, formatWhen, h, objectiveOf, poll, progressBar, stateBadge } from "./dom.js";

const PAGE_SIZE = 25;
const POLL_MS = 2000;
const SWEEP_STATES = ["running", "paused", "completed", "cancelled", "failed"];

export function mountSweeps(root) {
  let offset = 0;
  let state = "";
  let first = true;
  const rows = new Map(); // sweep id -> {signature, row}

  const count = h("span", { class: "muted", id: "sweeps-count" });
  const filter = h("select", { "aria-label": "Show sweeps in state", onchange: () => { state = filter.value; offset = 0; refresh(); } },
    h("option", { value: "" }, "all states"), SWEEP_STATES.map((s) => h("option", { value: s }, s)));
  const body = h("tbody");
  const table = h("table", { class: "grid sweeps-table" },
    h("thead", {}, h("tr", {}, ["Name", "State", "Progress", "Best", "Started"].map((name) => h("th", { scope: "col" }, name)))),
    body);
  const empty = h("p", { class: "empty", hidden: true });
  const error = h("p", { class: "error", role: "alert" });
  const previous = h("button", { type: "button", onclick: () => { offset = Math.max(0, offset - PAGE_SIZE); refresh(); } }, "‹ Newer");
  const next = h("button", { type: "button", onclick: () => { offset += PAGE_SIZE; refresh(); } }, "Older ›");
  const position = h("span", { class: "muted" });
  root.append(h("section", { class: "sweeps" },
    h("div", { class: "toolbar" }, h("h1", {}, "Sweeps"), count, h("span", { class: "spacer" }), filter,
      h("a", { class: "button primary", href: "#/new" }, "New sweep")),
    error, table, empty, h("div", { class: "pager" }, previous, position, next)));

  async function refresh() {
    // The first page's path is the one index.html requests early: "/sweeps?limit=25&offset=0".
    const query = new URLSearchParams({ limit: PAGE_SIZE, offset });
    if (state) query.set("state", state);
    const page = await api(`/sweeps?${query}`);
    error.textContent = "";
    render(page);
  }

  function render(page) {
    const seen = new Set();
    const ordered = page.data.map((sweep) => {
      seen.add(sweep.id);
      // The minute is in it so that "3 min ago" moves on.
      const signature = JSON.stringify([sweep.name, sweep.status, sweep.trial_counts, sweep.total_trials,
        sweep.best_trial?.id, sweep.started_at, Math.floor(Date.now() / 60_000)]);
      let entry = rows.get(sweep.id);
      if (!entry || entry.signature !== signature) {
        entry = { signature, row: sweepRow(sweep) };
        rows.set(sweep.id, entry);
      }
      return entry.row;
    });
    for (const id of rows.keys()) if (!seen.has(id)) rows.delete(id);
    body.replaceChildren(...ordered);
    count.textContent = `${page.count} sweep${page.count === 1 ? "" : "s"}`;
    empty.hidden = page.data.length > 0;
    table.hidden = page.data.length === 0;
    empty.replaceChildren(state ? `No ${state} sweeps.` : "No sweeps yet. ",
      state ? "" : h("a", { href: "#/new" }, "Create one"));
    previous.disabled = offset === 0;
    next.disabled = offset + PAGE_SIZE >= page.count;
    position.textContent = page.count ? `${offset + 1}–${Math.min(offset + PAGE_SIZE, page.count)} of ${page.count}` : "";
    if (first) {
      first = false;
      performance.mark("sweeps-rendered");
    }
  }

  return poll(refresh, POLL_MS, (failure) => { error.textContent = `Cannot load the sweeps: ${errorText(failure)}`; });
}

function sweepRow(sweep) {
  const finished = finishedCount(sweep.trial_counts);
  const best = objectiveOf(sweep.best_trial, sweep.spec);
  const objective = sweep.spec?.objective;
  return h("tr", { dataset: { sweepId: sweep.id } },
    h("td", {}, h("a", { href: `#/sweeps/${sweep.id}` }, sweep.name), h("span", { class: "muted id" }, ` #${sweep.id}`)),
    h("td", {}, stateBadge(sweep.status)),
    h("td", { class: "progress-cell" }, progressBar(finished, sweep.total_trials, sweep.trial_counts)),
    h("td", { class: "number", title: objective ? `${objective.metric} (${objective.goal})` : "" }, formatValue(best)),
    h("td", {}, formatWhen(sweep.started_at)));
}
