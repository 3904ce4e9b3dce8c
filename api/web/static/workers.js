// Every worker the server has seen: its state, where it runs, and what it runs now, with that trial's epoch
// and estimated finish. Workers are listed by the server (GET /workers); each busy one's trial is read for
// its progress, and each sweep once for its name and epochs.

import { api } from "./api.js";
import { errorText, formatWhen, h, poll } from "./dom.js";
import { progressLine, trialProgress } from "./progress.js";

const POLL_MS = 3000;
const STATES = ["busy", "idle", "lost"];

export function mountWorkers(root) {
  let state = "";
  const sweeps = new Map(); // sweep id -> {name, epochs}
  const count = h("span", { class: "muted", id: "workers-count" });
  const error = h("p", { class: "error", role: "alert" });
  const filter = h("select", { "aria-label": "Show workers in state", onchange: () => { state = filter.value; refresh(); } },
    h("option", { value: "" }, "all states"), STATES.map((s) => h("option", { value: s }, s)));
  const body = h("tbody");
  const table = h("table", { class: "grid workers-table" },
    h("thead", {}, h("tr", {}, ["Worker", "State", "Host", "GPU", "Running", "Progress", "Last call"].map((name) => h("th", { scope: "col" }, name)))),
    body);
  const empty = h("p", { class: "empty", hidden: true });
  root.append(h("section", { class: "workers" },
    h("div", { class: "toolbar" }, h("h1", {}, "Workers"), count, h("span", { class: "spacer" }), filter),
    error, h("div", { class: "table-box card" }, table, empty)));

  async function sweepOf(sweepId) {
    if (!sweeps.has(sweepId)) {
      const sweep = await api(`/sweeps/${sweepId}`);
      sweeps.set(sweepId, { name: sweep.name, epochs: sweep.spec.train?.epochs ?? 0 });
    }
    return sweeps.get(sweepId);
  }

  async function refresh() {
    const page = await api(`/workers${state ? `?state=${state}` : ""}`);
    const trials = await Promise.all(page.data.map(async (worker) => {
      if (worker.trial_id === null) return null;
      const trial = await api(`/trials/${worker.trial_id}`).catch(() => null);
      return trial ? { trial, sweep: await sweepOf(trial.sweep_id) } : null;
    }));
    error.textContent = "";
    body.replaceChildren(...page.data.map((worker, i) => workerRow(worker, trials[i])));
    count.textContent = `${page.count} worker${page.count === 1 ? "" : "s"}`;
    table.hidden = page.data.length === 0;
    empty.hidden = page.data.length > 0;
    empty.textContent = state ? `No ${state} workers.` : "No worker has called this server yet: start one with `sweeper worker`.";
    performance.mark("workers-rendered");
  }

  return poll(refresh, POLL_MS, (failure) => { error.textContent = `Cannot load the workers: ${errorText(failure)}`; });
}

function workerRow(worker, running) {
  const trial = running?.trial;
  return h("tr", { dataset: { workerId: worker.id } },
    h("td", { class: "worker-id" }, worker.id),
    h("td", {}, h("span", { class: `badge worker-${worker.state}` }, worker.state)),
    h("td", {}, worker.host ?? h("span", { class: "muted" }, "—")),
    h("td", {}, worker.gpu ?? h("span", { class: "muted" }, "CPU")),
    h("td", { class: "running" }, trial
      ? h("a", { href: `#/sweeps/${trial.sweep_id}` }, `${running.sweep.name} · trial ${trial.number}`)
      : worker.trial_id !== null ? `trial #${worker.trial_id}` : h("span", { class: "muted" }, "—")),
    h("td", { class: "progress-cell" }, trial && trial.state === "running" ? progressLine(trialProgress(trial, running.sweep.epochs)) : null),
    h("td", {}, formatWhen(worker.last_heartbeat_at)));
}
