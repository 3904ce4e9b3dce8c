// One sweep: its progress and controls, the objective of every trial with the best so far, its analysis
// (analysis.js: importance, slices, compared curves), the trials table (paged, sorted and filtered by the
// server, so 10,000 trials cost one page) with each running trial's epoch and estimated finish, a trial's
// curves on click (below the table, which keeps its full width), exports, and its TensorBoard.

import { api } from "./api.js";
import { analysisCard, COMPARE_LIMIT } from "./analysis.js";
import { bestConfigYaml } from "./best_config.js";
import { lineChart, objectiveChart } from "./charts.js";
import { progressLine, trialProgress } from "./progress.js";
import {
  ACTIVE_SWEEP, epochsTrained, errorText, fill, finishedCount, formatValue, formatWhen, h, objectiveOf, poll, progressBar, stateBadge,
  trialStateBadge, TRIAL_STATES,
} from "./dom.js";

const PAGE_SIZE = 50;
const POLL_MS = 2000;

export async function mountSweep(root, id) {
  const view = {
    sweep: null,
    sort: "index",
    order: "asc",
    state: "",
    offset: 0,
    selected: null, // trial id shown in the panel
    countsSeen: null, // the trial counts the table and chart were last loaded for
    completedSeen: null,
    objectiveLoadedAt: 0,
    objectivePoints: 0,
    tableRequests: 0,
    progress: new Map(), // running trial id -> its trial detail, for the epoch and finish estimate
  };

  const title = h("h1", {}, `Sweep ${id}`);
  const badge = h("span");
  const controls = h("div", { class: "controls" });
  const notice = h("p", { class: "error", role: "alert" });
  // Set while no connected worker can run the sweep's trials (a sweep of 2 GPUs per trial, workers of 1).
  const waiting = h("p", { class: "waiting", id: "waiting-for", role: "status" });
  const summary = h("div", { class: "summary" });
  const chart = h("div", { class: "chart-box" });
  const tableBox = h("div", { class: "table-box" });
  const filter = h("select", { "aria-label": "Show trials in state", onchange: () => { view.state = filter.value; view.offset = 0; loadTrials(); } },
    h("option", { value: "" }, "all states"), TRIAL_STATES.map((state) => h("option", { value: state }, state)));
  const pager = h("div", { class: "pager" });
  const panel = h("aside", { class: "card trial-panel", hidden: true, "aria-label": "Trial" });
  const copied = h("span", { class: "muted copy-status", role: "status" });
  const bestYaml = h("details", { class: "best-yaml", hidden: true }, h("summary", {}, "Best configuration as YAML"), h("pre", {}));
  const copyBest = h("button", { type: "button", id: "copy-best", disabled: true, onclick: () => copyBestConfig() }, "Copy best config (YAML)");
  const exports = h("div", { class: "exports" },
    h("a", { class: "button", id: "export-csv", href: `/api/v1/sweeps/${id}/trials.csv`, download: `sweep-${id}-trials.csv` }, "Export CSV"),
    h("a", { class: "button", id: "export-json", href: `/api/v1/sweeps/${id}/trials.json`, download: `sweep-${id}-trials.json` }, "Export JSON"),
    copyBest, copied);
  const analysis = analysisCard(id, { onPick: select, onCompareChange: () => markCompared() });
  root.append(h("section", { class: "sweep-page" },
    h("div", { class: "toolbar" }, title, badge, h("span", { class: "spacer" }), controls),
    notice, waiting, summary, exports, bestYaml,
    h("section", { class: "card" }, h("h2", {}, "Objective per trial"), chart),
    analysis.element,
    h("section", { class: "card trials-card" },
      h("div", { class: "card-head" }, h("h2", {}, "Trials"), h("span", { class: "muted compare-hint" }, `tick up to ${COMPARE_LIMIT} to compare their curves`),
        h("span", { class: "spacer" }), filter), tableBox, pager),
    panel));

  // -- the sweep -----------------------------------------------------------------------------------

  async function refresh() {
    const sweep = await api(`/sweeps/${id}`);
    const first = view.sweep === null;
    view.sweep = sweep;
    notice.textContent = sweep.reason ? `${sweep.status}: ${sweep.reason}` : "";
    waiting.textContent = sweep.waiting_for ? `Waiting for ${sweep.waiting_for.message}.` : "";
    renderHeader(sweep);
    const counts = JSON.stringify([sweep.status, sweep.trial_counts]);
    const work = [];
    let table = null;
    if (counts !== view.countsSeen) {
      view.countsSeen = counts;
      table = loadTrials();
      work.push(table);
    }
    // A big sweep's chart is reloaded less often (about a second per 1,000 points, at most every 30 s):
    // its points cost the server more than the table. Once the sweep has ended, at once.
    const due = Date.now() - view.objectiveLoadedAt >= Math.min(30_000, view.objectivePoints);
    if (sweep.trial_counts.completed !== view.completedSeen && (due || !ACTIVE_SWEEP.includes(sweep.status))) {
      view.completedSeen = sweep.trial_counts.completed;
      work.push(loadObjective());
    }
    if (view.selected !== null && panel.dataset.live === "true") work.push(loadTrial(view.selected));
    // After the table, whose running rows it reads.
    if (sweep.trial_counts.running > 0 || view.progress.size) work.push((table ?? Promise.resolve()).then(loadProgress));
    work.push(analysis.update(sweep));
    await Promise.all(work);
    if (first) performance.mark("sweep-rendered");
  }

  function renderHeader(sweep) {
    title.replaceChildren(sweep.name, h("span", { class: "muted id" }, ` #${sweep.id}`));
    badge.replaceChildren(stateBadge(sweep.status));
    const counts = sweep.trial_counts;
    const objective = sweep.spec.objective;
    const best = sweep.best_trial;
    const stopping = stoppingText(sweep.spec.stopping);
    copyBest.disabled = !best;
    copyBest.title = best ? `trial ${best.number}'s hparams, to paste into a spec` : "no trial has completed yet";
    summary.replaceChildren(
      h("div", { class: "summary-progress" }, progressBar(finishedCount(counts), sweep.total_trials, counts),
        h("div", { class: "counts" }, TRIAL_STATES.filter((state) => counts[state]).map((state) =>
          h("span", { class: `count state-${state}`, dataset: { state },
            title: state === "pruned" ? "stopped early by the sweep's stopping rule" : null }, `${counts[state]} ${state}`)))),
      h("dl", { class: "facts" },
        sweep.pareto_front ? paretoFacts(sweep, select) : [
          h("dt", {}, `Best ${objective.metric}`),
          h("dd", { class: "best-value" }, best
            ? [formatValue(objectiveOf(best, sweep.spec)), " ", h("a", { href: "#", onclick: (event) => { event.preventDefault(); select(best.id); } }, `trial ${best.number}`)]
            : h("span", { class: "muted" }, "none yet")),
          h("dt", {}, "Goal"), h("dd", {}, objective.goal)],
        h("dt", {}, "Model"), h("dd", {}, `${sweep.spec.model} on ${sweep.spec.dataset}`),
        h("dt", {}, "Search"), h("dd", { class: "search" }, searchText(sweep)),
        stopping ? [h("dt", {}, "Stopping"), h("dd", { class: "stopping" }, stopping)] : null,
        h("dt", {}, "Started"), h("dd", {}, formatWhen(sweep.started_at)),
        sweep.finished_at ? [h("dt", {}, "Finished"), h("dd", {}, formatWhen(sweep.finished_at))] : null));
    // Rebuilt only when the status changes, so a click in progress (TensorBoard starting) keeps its button.
    if (controls.dataset.status === sweep.status) return;
    controls.dataset.status = sweep.status;
    fill(controls,
      sweep.status === "running" ? control("Pause", "pause") : null,
      sweep.status === "paused" ? control("Resume", "resume") : null,
      ACTIVE_SWEEP.includes(sweep.status) ? control("Cancel", "cancel", `Cancel sweep ${sweep.name}? Pending trials are dropped and running ones stop.`) : null,
      tensorboardLink(sweep.id, notice));
  }

  function control(label, action, question) {
    return h("button", { type: "button", class: action === "cancel" ? "danger" : "", onclick: async (event) => {
      const button = event.currentTarget;
      if (question && !confirm(question)) return;
      button.disabled = true;
      try {
        await api(`/sweeps/${id}/${action}`, { method: "POST" });
        await refresh();
      } catch (error) {
        notice.textContent = `${label} failed: ${errorText(error)}`;
      } finally {
        button.disabled = false;
      }
    } }, label);
  }

  // -- the chart -----------------------------------------------------------------------------------

  async function loadObjective() {
    const objective = await api(`/sweeps/${id}/objective`);
    view.objectiveLoadedAt = Date.now();
    view.objectivePoints = objective.points.length;
    chart.replaceChildren(objectiveChart(objective, {
      bestTrialId: view.sweep?.best_trial?.id, onPick: select, onDrawn: () => performance.mark("objective-rendered"),
    }));
    if (!objective.points.length) performance.mark("objective-rendered");
  }

  // -- the table -----------------------------------------------------------------------------------

  async function loadTrials() {
    const query = new URLSearchParams({ limit: PAGE_SIZE, offset: view.offset, sort: view.sort, order: view.order });
    if (view.state) query.set("state", view.state);
    const mine = ++view.tableRequests;
    const page = await api(`/sweeps/${id}/trials?${query}`);
    if (mine === view.tableRequests) renderTable(page); // an older answer never replaces a newer one
  }

  function sortBy(key) {
    if (view.sort === key) view.order = view.order === "asc" ? "desc" : "asc";
    else {
      view.sort = key;
      // The objective starts best first; anything else ascending.
      view.order = key === "objective" && view.sweep?.spec.objective.goal !== "minimize" ? "desc" : "asc";
    }
    view.offset = 0;
    loadTrials();
  }

  function renderTable(page) {
    const sweep = view.sweep;
    const metric = sweep.spec.objective.metric;
    const names = Object.keys(sweep.spec.hparams);
    const bestId = sweep.best_trial?.id;
    const front = new Set(sweep.pareto_front ?? []);
    // A multi-objective sweep shows every objective's value, the first in the objective column.
    const others = (sweep.spec.objectives ?? []).slice(1).map((objective) => objective.metric);
    const heading = (label, key) => {
      const sorted = view.sort === key;
      return h("th", { scope: "col", "aria-sort": sorted ? (view.order === "asc" ? "ascending" : "descending") : "none" },
        key ? h("button", { type: "button", class: "sort", dataset: { sort: key }, onclick: () => sortBy(key) },
          label, h("span", { class: "arrow" }, sorted ? (view.order === "asc" ? " ▲" : " ▼") : "")) : label);
    };
    const epochs = sweep.spec.train?.epochs ?? 0;
    const pbt = sweep.spec.search?.strategy === "pbt";
    const rows = page.data.map((trial) => h("tr", {
      class: [trial.id === bestId ? "best" : "", trial.id === view.selected ? "selected" : ""].join(" ").trim() || null,
      dataset: { trialId: trial.id }, tabindex: 0,
      onclick: () => select(trial.id),
      onkeydown: (event) => { if (event.key === "Enter") select(trial.id); },
    },
    h("td", { class: "pick" }, h("input", {
      type: "checkbox", class: "compare-box", "aria-label": `compare trial ${trial.number}`,
      checked: analysis.comparing(trial.id), disabled: !analysis.comparing(trial.id) && analysis.full(),
      onclick: (event) => event.stopPropagation(),
      onchange: (event) => { if (!analysis.toggle(trial.id, trial.number)) event.target.checked = false; },
    })),
    h("td", { class: "number" }, trial.number, trial.id === bestId ? h("span", { class: "star", title: "best trial" }, " ★") : null,
      front.has(trial.id) ? h("span", { class: "star pareto", title: "on the Pareto front" }, " ◆") : null),
    h("td", { class: "state", dataset: { trialId: trial.id } }, trialStateBadge(trial),
      trial.state === "running" && view.progress.has(trial.id) ? progressLine(trialProgress(view.progress.get(trial.id), epochs)) : null),
    h("td", { class: "number" }, formatValue(trial.metrics?.[metric] ?? null)),
    others.map((name) => h("td", { class: "number" }, formatValue(trial.metrics?.[name] ?? null))),
    names.map((name) => h("td", { class: "number" }, formatValue(trial.hparams[name] ?? null))),
    pbt ? h("td", { class: "lineage" }, lineageCell(trial)) : null,
    h("td", { class: "number" }, trial.attempts),
    h("td", { class: "failure", title: trial.error ?? "" }, trial.error ?? "")));
    fill(tableBox, h("table", { class: "grid trials-table" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "pick", title: "compare" }, h("span", { class: "visually-hidden" }, "Compare")), heading("#", "index"), heading("State"), heading(metric, "objective"),
        others.map((name) => heading(name, `metrics.${name}`)),
        names.map((name) => heading(name, `hparams.${name}`)), pbt ? heading("Lineage") : null,
        heading("Attempts"), heading("Failure"))),
      h("tbody", {}, rows)),
    page.data.length ? null : h("p", { class: "empty" }, view.state ? `No ${view.state} trials.` : "No trials yet: they are created as workers claim them."));
    const last = Math.min(view.offset + PAGE_SIZE, page.count);
    pager.replaceChildren(
      h("button", { type: "button", disabled: view.offset === 0, onclick: () => { view.offset = Math.max(0, view.offset - PAGE_SIZE); loadTrials(); } }, "‹ Previous"),
      h("span", { class: "muted" }, page.count ? `${view.offset + 1}–${last} of ${page.count}` : "0 trials"),
      h("button", { type: "button", class: "next-page", disabled: last >= page.count, onclick: () => { view.offset += PAGE_SIZE; loadTrials(); } }, "Next ›"));
    performance.mark("trials-rendered");
  }

  // -- one trial -----------------------------------------------------------------------------------

  function select(trialId) {
    view.selected = trialId;
    for (const row of tableBox.querySelectorAll("tr[data-trial-id]")) {
      row.classList.toggle("selected", Number(row.dataset.trialId) === trialId);
    }
    loadTrial(trialId).catch((error) => { notice.textContent = `Cannot load trial ${trialId}: ${errorText(error)}`; });
  }

  async function loadTrial(trialId) {
    const trial = await api(`/trials/${trialId}`);
    if (view.selected !== trialId) return; // another trial was picked meanwhile
    panel.dataset.live = String(trial.state === "running" || trial.state === "pending");
    const opening = panel.hidden || panel.dataset.trialId !== String(trialId);
    panel.hidden = false;
    panel.dataset.trialId = String(trialId);
    fill(panel, trialDetail(trial, view.sweep, () => { view.selected = null; panel.hidden = true; }));
    // Below the table, which keeps its width: brought into view when a trial is opened, not on every refresh.
    if (opening) panel.scrollIntoView({ block: "nearest" });
    performance.mark("trial-rendered");
  }

  // -- running trials: epoch and estimated finish ---------------------------------------------------

  async function loadProgress() {
    const running = [...tableBox.querySelectorAll("tr[data-trial-id]")]
      .filter((row) => row.querySelector(".state-running")).map((row) => Number(row.dataset.trialId)).slice(0, 16);
    const details = await Promise.all(running.map((trialId) => api(`/trials/${trialId}`).catch(() => null)));
    view.progress = new Map(details.filter((trial) => trial?.state === "running").map((trial) => [trial.id, trial]));
    const epochs = view.sweep.spec.train?.epochs ?? 0;
    for (const cell of tableBox.querySelectorAll("td.state[data-trial-id]")) {
      const trial = view.progress.get(Number(cell.dataset.trialId));
      cell.querySelector(".epoch-progress")?.remove();
      if (trial) cell.append(progressLine(trialProgress(trial, epochs)));
    }
  }

  // -- comparing and copying ------------------------------------------------------------------------

  function markCompared() {
    const full = analysis.full();
    for (const box of tableBox.querySelectorAll("input.compare-box")) {
      const trialId = Number(box.closest("tr").dataset.trialId);
      box.checked = analysis.comparing(trialId);
      box.disabled = !box.checked && full;
    }
  }

  async function copyBestConfig() {
    const best = view.sweep?.best_trial;
    if (!best) return;
    const text = bestConfigYaml(best, Object.keys(view.sweep.spec.hparams));
    bestYaml.querySelector("pre").textContent = text;
    try {
      await navigator.clipboard.writeText(text);
      copied.textContent = `Copied trial ${best.number}'s hparams.`;
    } catch {
      // No clipboard (an insecure origin, a refused permission): the snippet is shown to copy by hand.
      copied.textContent = "The clipboard is not available here: copy it below.";
      bestYaml.open = true;
    }
    bestYaml.hidden = false;
  }

  return poll(refresh, POLL_MS, (error) => { notice.textContent = `Cannot load sweep ${id}: ${errorText(error)}`; });
}

function trialDetail(trial, sweep, close) {
  const history = trial.history ?? [];
  const series = (name) => ({ name, points: history.filter((e) => Number.isFinite(e.metrics[name])).map((e) => [e.epoch, e.metrics[name]]) });
  const metric = sweep.spec.objective.metric;
  const epochs = epochsTrained(trial);
  // A pruned trial's curves end where it stopped, on an axis running to the last epoch it would have trained;
  // a line marks that epoch (an index from 0, as on the axis).
  const ending = epochs === null ? {} : {
    stoppedAt: trial.pruned_at_epoch, stoppedLabel: `pruned @ ${epochs}`, lastEpoch: (sweep.spec.train?.epochs ?? 0) - 1,
  };
  const charts = [lineChart("Loss", [series("loss"), series("val_loss")], ending)];
  if (!["loss", "val_loss", "learning_rate"].includes(metric)) {
    const train = metric.startsWith("val_") ? metric.slice(4) : null;
    charts.push(lineChart(metric, [series(metric), train ? series(train) : null].filter(Boolean), ending));
  }
  charts.push(lineChart("Learning rate", [series("learning_rate")], { ...ending, log: true }));
  // The learning rate is an hparam (what the trial started with) and a metric (where its schedule ended): it is
  // listed once, as the hparam, and its schedule is the chart.
  const metrics = Object.entries(trial.metrics ?? {}).filter(([name]) => !(name in trial.hparams));
  return [
    h("div", { class: "card-head" }, h("h2", {}, `Trial ${trial.number}`), h("span", { class: "muted id" }, `id ${trial.id}`),
      trialStateBadge(trial), h("span", { class: "spacer" }),
      h("button", { type: "button", class: "link", "aria-label": "close", onclick: close }, "✕")),
    trial.error ? h("div", { class: "failure-reason" },
      h("p", { class: "error" }, h("strong", {}, trial.failure_kind ? `${trial.failure_kind}: ` : "failed: "), trial.error),
      trial.traceback ? h("details", {}, h("summary", {}, "Traceback"), h("pre", {}, trial.traceback)) : null) : null,
    trial.state === "pruned" ? h("div", { class: "prune-reason" },
      h("p", {}, h("strong", {}, epochs === null ? "Pruned: " : `Pruned after ${epochs} epoch${epochs === 1 ? "" : "s"}: `),
        trial.prune_reason ?? "stopped by the sweep's stopping rule.")) : null,
    h("div", { class: "trial-facts" },
      h("section", {}, h("h3", {}, "Hyperparameters"), h("dl", { class: "facts hparam-facts" },
        Object.entries(trial.hparams).map(([name, value]) => [h("dt", {}, name), h("dd", {}, formatValue(value))]))),
      h("section", {}, h("h3", {}, "Final metrics"), metrics.length ? h("dl", { class: "facts metric-facts" },
        metrics.map(([name, value]) => [h("dt", {}, name), h("dd", { class: name === metric ? "best-value" : "" }, formatValue(value))]))
        : h("p", { class: "muted" }, "None yet.")),
      h("section", {}, h("h3", {}, "Run"), h("dl", { class: "facts run-facts" },
        h("dt", {}, "attempts"), h("dd", {}, trial.attempts),
        trial.worker_id ? [h("dt", {}, "worker"), h("dd", {}, trial.worker_id)] : null,
        trial.state === "running" ? [h("dt", {}, "progress"), h("dd", {}, progressLine(trialProgress(trial, sweep.spec.train?.epochs ?? 0)))] : null))),
    trial.lineage ? lineageSection(trial.lineage) : null,
    history.length ? h("div", { class: "curves" }, charts) : h("p", { class: "empty" }, "No epoch reported yet."),
  ];
}

/** A PBT member's cell in the trial table: its segment count, and the member its current segment copied. */
function lineageCell(trial) {
  const lineage = trial.lineage ?? [];
  const last = lineage[lineage.length - 1];
  const count = `${lineage.length} segment${lineage.length === 1 ? "" : "s"}`;
  return last?.parent_number ? `${count}, from ${last.parent_number}` : count;
}

/** A PBT member's segments, oldest first: where each one's weights came from and which hparams changed. */
function lineageSection(lineage) {
  const changes = (before, after) => Object.keys(after).filter((name) => before[name] !== after[name])
    .map((name) => `${name} ${formatValue(before[name] ?? null)} → ${formatValue(after[name])}`);
  return h("section", { class: "lineage" }, h("h3", {}, "Lineage"), h("ol", { class: "segments" },
    lineage.map((segment, position) => {
      const from = `from epoch ${segment.start_epoch + 1}`;
      if (!segment.parent_number) {
        return h("li", {}, h("strong", {}, `Segment ${segment.segment}`), ` ${from}: `,
          Object.entries(segment.hparams).map(([name, value]) => `${name} ${formatValue(value)}`).join(", "));
      }
      const changed = changes(lineage[position - 1]?.hparams ?? {}, segment.hparams);
      const copied = `copied member ${segment.parent_number} after epoch ${segment.parent_epoch + 1}`;
      return h("li", {}, h("strong", {}, `Segment ${segment.segment}`),
        ` ${from}: ${copied}; ${changed.length ? changed.join(", ") : "same hparams"}`);
    })));
}

/** A multi-objective sweep's objectives and its Pareto front, linked to its trials. */
function paretoFacts(sweep, select) {
  const front = sweep.pareto_front;
  return [
    h("dt", {}, "Objectives"),
    h("dd", {}, sweep.spec.objectives.map((objective) => `${objective.metric} (${objective.goal})`).join(", ")),
    h("dt", {}, "Pareto front"),
    h("dd", { class: "pareto-front" }, front.length
      ? [`${front.length} trial${front.length === 1 ? "" : "s"}: `, front.map((id, position) => [position ? ", " : "",
        h("a", { href: "#", onclick: (event) => { event.preventDefault(); select(id); } }, `${sweep.pareto_front_numbers[position]}`)])]
      : h("span", { class: "muted" }, "none yet")),
  ];
}

/** The spec's search settings in words: "tpe, 20 trials, seed 1". */
function searchText(sweep) {
  const search = sweep.spec.search ?? {};
  const trials = `${sweep.total_trials.toLocaleString("en")} trial${sweep.total_trials === 1 ? "" : "s"}`;
  if (search.strategy === "pbt") {
    return [`pbt, ${sweep.total_trials} members`, `judged every ${search.interval_epochs} epochs`,
      `mutable ${(search.mutable ?? []).join(", ")}`, `seed ${search.seed ?? 0}`].join(", ");
  }
  return [search.strategy ?? "random", trials, search.strategy === "grid" ? null : `seed ${search.seed ?? 0}`].filter(Boolean).join(", ");
}

/** The spec's stopping rule in words, or null when the sweep has none. */
function stoppingText(stopping) {
  if (!stopping || !stopping.rule || stopping.rule === "none") return null;
  const after = (n) => `${n} epoch${n === 1 ? "" : "s"}`;
  if (stopping.rule === "median") {
    return `median: after ${after(stopping.min_epochs)} or more, a trial worse than the median of earlier trials at the same epoch stops`;
  }
  return `${stopping.rule}: first rung after ${after(stopping.min_epochs)}, `
    + `1 in ${stopping.reduction_factor} trials goes on at each rung`;
}

/** A link to the sweep's TensorBoard; a click starts (or reuses) it first, then opens its HParams dashboard. */
function tensorboardLink(sweepId, notice) {
  const href = `/tensorboard/${sweepId}/#hparams`;
  const link = h("a", { class: "button", href, target: "_blank", id: "open-tensorboard" }, "Open in TensorBoard");
  link.addEventListener("click", async (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return; // the browser's own way
    event.preventDefault();
    // Opened now, while the click still counts as the user's: a tab opened after the await would be blocked.
    const tab = window.open("", "_blank");
    if (tab) tab.document.title = `Starting TensorBoard for sweep ${sweepId}…`;
    tab?.document.body.append(`Starting TensorBoard for sweep ${sweepId}…`);
    link.setAttribute("aria-busy", "true");
    link.textContent = "Starting TensorBoard…";
    try {
      const { url } = await api(`/sweeps/${sweepId}/tensorboard`, { method: "POST" });
      if (tab) tab.location.replace(`${url}#hparams`);
      else location.assign(`${url}#hparams`);
    } catch (error) {
      tab?.close();
      notice.textContent = `Cannot open TensorBoard: ${errorText(error)}`;
    } finally {
      link.removeAttribute("aria-busy");
      link.textContent = "Open in TensorBoard";
    }
  });
  return link;
}
