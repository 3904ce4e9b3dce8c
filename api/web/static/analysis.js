// A sweep's analysis card, in three tabs: which hparams matter (importance, computed by the server with
// Optuna's evaluators), the objective against each hparam (slice plots), and the curves of the trials picked
// in the table, overlaid. Each tab loads when it is shown, and again when its data moved on.

import { api } from "./api.js";
import { importanceBars, lineChart, sliceChart } from "./charts.js";
import { ACTIVE_SWEEP, errorText, fill, h } from "./dom.js";

export const COMPARE_LIMIT = 8;
const EVALUATORS = [["fanova", "fANOVA"], ["ped_anova", "PED-ANOVA"], ["mean_decrease_impurity", "Mean decrease in impurity"]];

/** The hparams a sweep searches, with their domains (fixed values are not searched). */
export function searchedHparams(spec) {
  return Object.entries(spec.hparams ?? {}).filter(([, domain]) => domain && typeof domain === "object" && !Array.isArray(domain) && domain.type);
}

/**
 * @param {number} id  the sweep
 * @param {{onPick: (trialId: number) => void, onCompareChange: () => void}} hooks
 */
export function analysisCard(id, { onPick, onCompareChange }) {
  const view = {
    sweep: null,
    tab: "importance",
    evaluator: "fanova",
    loaded: {}, // tab -> the signature its data was loaded for
    loadedAt: {},
    compare: new Map(), // trial id -> trial number, in the order picked
    compareLive: false,
  };
  const tabs = [["importance", "Parameter importance"], ["slices", "Objective per hparam"], ["compare", "Compare trials"]];
  const buttons = tabs.map(([key, label]) => h("button", {
    type: "button", role: "tab", id: `tab-${key}`, "aria-controls": `pane-${key}`, dataset: { tab: key },
    onclick: () => show(key),
  }, label));
  const panes = Object.fromEntries(tabs.map(([key]) => [key, h("div", { role: "tabpanel", id: `pane-${key}`, "aria-labelledby": `tab-${key}`, class: `pane pane-${key}` })]));
  const compareCount = h("span", { class: "tab-count" });
  buttons[2].append(compareCount);
  const element = h("section", { class: "card analysis" }, h("div", { class: "tabs", role: "tablist" }, buttons), Object.values(panes));

  function show(tab) {
    view.tab = tab;
    for (const button of buttons) button.setAttribute("aria-selected", String(button.dataset.tab === tab));
    for (const [key, pane] of Object.entries(panes)) pane.hidden = key !== tab;
    load(true);
  }

  /** What the tab's data depends on: when it changes, the tab loads again. */
  function signature(tab) {
    const counts = view.sweep?.trial_counts ?? {};
    // While a compared trial runs, its curves grow: every poll reloads them.
    if (tab === "compare") return JSON.stringify([[...view.compare.keys()], view.compareLive ? Date.now() : 0]);
    if (tab === "importance") return JSON.stringify([counts.completed, view.evaluator]);
    return String(counts.completed);
  }

  async function load(now = false) {
    const tab = view.tab;
    if (!view.sweep) return;
    const wanted = signature(tab);
    if (view.loaded[tab] === wanted) return;
    // A big running sweep's analysis is reloaded at most every 30 s: it costs the server more than the rest.
    const running = ACTIVE_SWEEP.includes(view.sweep.status);
    const recent = Date.now() - (view.loadedAt[tab] ?? 0) < Math.min(30_000, (view.sweep.trial_counts.completed ?? 0) * 5);
    if (!now && running && recent && tab !== "compare") return;
    view.loaded[tab] = wanted;
    view.loadedAt[tab] = Date.now();
    try {
      if (tab === "importance") await loadImportance();
      else if (tab === "slices") await loadSlices();
      else await loadCompare();
    } catch (error) {
      view.loaded[tab] = null;
      fill(panes[tab], h("p", { class: "error" }, `Cannot load: ${errorText(error)}`));
    }
  }

  async function loadImportance() {
    const pane = panes.importance;
    const select = h("select", { "aria-label": "Importance evaluator", class: "evaluator", onchange: () => { view.evaluator = select.value; load(true); } },
      EVALUATORS.map(([value, label]) => h("option", { value, selected: value === view.evaluator }, label)));
    if (!pane.firstChild) fill(pane, h("p", { class: "muted" }, "Computing…"));
    const found = await api(`/sweeps/${id}/importance?evaluator=${view.evaluator}`);
    // With too few trials nothing was judged: the reason below says why, so no sample is spoken of.
    const judged = found.judged > 0 && found.judged < found.completed
      ? `a seeded sample of ${found.judged.toLocaleString("en")} of the ${found.completed.toLocaleString("en")} completed trials`
      : `${found.completed.toLocaleString("en")} completed trial${found.completed === 1 ? "" : "s"}`;
    fill(pane,
      h("div", { class: "card-head" }, h("p", { class: "muted pane-note" }, `How much each hparam matters for ${found.metric} (${found.goal}), over ${judged}.`),
        h("span", { class: "spacer" }), select),
      found.importances.length ? importanceBars(found.importances) : h("p", { class: "empty importance-reason" }, found.reason));
    performance.mark("importance-rendered");
  }

  async function loadSlices() {
    const pane = panes.slices;
    const sweep = view.sweep;
    const searched = searchedHparams(sweep.spec);
    if (!searched.length) {
      fill(pane, h("p", { class: "empty" }, "The sweep searches no hparam: every one is fixed."));
      return;
    }
    if (!pane.firstChild) fill(pane, h("p", { class: "muted" }, "Loading the completed trials…"));
    const metric = sweep.spec.objective.metric;
    const page = await api(`/sweeps/${id}/trials?state=completed&limit=100000`);
    fill(pane,
      h("p", { class: "muted pane-note" }, `${metric} of each of the ${page.count.toLocaleString("en")} completed trials against each searched hparam.`),
      h("div", { class: "slices" }, searched.map(([name, domain]) => sliceChart(name, domain,
        page.data.filter((trial) => name in trial.hparams)
          .map((trial) => ({ value: trial.hparams[name], objective: trial.metrics?.[metric], number: trial.number })),
        metric))));
    performance.mark("slices-rendered");
  }

  const compareMetric = h("select", { "aria-label": "Compare which metric", class: "compare-metric", onchange: () => { view.loaded.compare = null; load(true); } });

  async function loadCompare() {
    const pane = panes.compare;
    const ids = [...view.compare.keys()];
    if (!ids.length) {
      fill(pane, h("p", { class: "empty" }, `Tick up to ${COMPARE_LIMIT} trials in the table below to overlay their curves here.`));
      return;
    }
    const trials = await Promise.all(ids.map((trialId) => api(`/trials/${trialId}`)));
    view.compareLive = trials.some((trial) => trial.state === "running" || trial.state === "pending");
    const names = new Set();
    for (const trial of trials) for (const entry of trial.history ?? []) for (const name of Object.keys(entry.metrics)) names.add(name);
    const objective = view.sweep.spec.objective.metric;
    const choices = [objective, ...[...names].filter((name) => name !== objective).sort()];
    const chosen = choices.includes(compareMetric.value) ? compareMetric.value : objective;
    fill(compareMetric, choices.map((name) => h("option", { value: name, selected: name === chosen }, name)));
    const series = trials.map((trial, i) => ({
      name: `trial ${trial.number}`, colour: i,
      points: (trial.history ?? []).filter((entry) => Number.isFinite(entry.metrics[chosen])).map((entry) => [entry.epoch, entry.metrics[chosen]]),
    }));
    fill(pane,
      h("div", { class: "card-head" },
        h("div", { class: "picked" }, trials.map((trial, i) => h("span", { class: `chip series-${i}`, dataset: { trialId: trial.id } },
          h("a", { href: "#", onclick: (event) => { event.preventDefault(); onPick(trial.id); } }, `trial ${trial.number}`),
          h("button", { type: "button", class: "link", "aria-label": `stop comparing trial ${trial.number}`, onclick: () => toggle(trial.id) }, "✕")))),
        h("span", { class: "spacer" }), compareMetric,
        h("button", { type: "button", class: "link", onclick: () => { view.compare.clear(); changed(); } }, "Clear")),
      lineChart(chosen, series, { log: chosen === "learning_rate" }));
    performance.mark("compare-rendered");
  }

  function changed() {
    compareCount.textContent = view.compare.size ? ` (${view.compare.size})` : "";
    view.loaded.compare = null;
    onCompareChange();
    if (view.tab === "compare") load(true);
  }

  /** Add the trial to the comparison, or take it out; false when the comparison is full. */
  function toggle(trialId, number = null) {
    if (view.compare.has(trialId)) view.compare.delete(trialId);
    else if (view.compare.size >= COMPARE_LIMIT) return false;
    else view.compare.set(trialId, number);
    changed();
    return true;
  }

  show("importance");
  return {
    element,
    /** The sweep as last read: loads the shown tab when its data moved on. */
    update(sweep) {
      view.sweep = sweep;
      return load();
    },
    toggle,
    comparing: (trialId) => view.compare.has(trialId),
    full: () => view.compare.size >= COMPARE_LIMIT,
    show,
  };
}
