// A new sweep: fill the form, or paste a YAML/JSON spec. The spec is checked by the server first
// (POST /sweeps/validate); its problems show next to the field they name, and nothing is created
// until the spec is valid.

import { api, ApiError } from "./api.js";
import { errorText, h } from "./dom.js";

const DOMAINS = ["discrete", "real_interval", "int_interval", "fixed"];
const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;
const EXAMPLE = `name: digits-mlp
model: mlp
dataset: digits
objective: {metric: val_accuracy, goal: maximize}
hparams:
  units: {type: discrete, values: [32, 64, 128]}
  dropout: {type: real_interval, min: 0.0, max: 0.4}
  learning_rate: {type: real_interval, min: 1.0e-3, max: 1.0e-1, log: true}
  batch_size: 64
search: {strategy: random, max_trials: 12, seed: 0}
train: {epochs: 10}`;

export async function mountNewSweep(root) {
  const registry = await api("/registry").catch((error) => ({ models: [], datasets: [], dataset_formats: [], error }));
  const form = sweepForm(registry);
  const paste = pasteBox();
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const show = (which) => {
    for (const [button, panel, name] of [[formTab, form.element, "form"], [pasteTab, paste.element, "paste"]]) {
      button.setAttribute("aria-selected", String(name === which));
      panel.hidden = name !== which;
    }
    // The form's spec carries over, so the paste box starts from what was filled in (JSON is YAML too).
    if (which === "paste" && !paste.text.value.trim() && form.touched) paste.text.value = JSON.stringify(form.spec(), null, 2);
  };
  const formTab = h("button", { type: "button", role: "tab", onclick: () => show("form") }, "Form");
  const pasteTab = h("button", { type: "button", role: "tab", onclick: () => show("paste") }, "Paste YAML or JSON");
  tabs.append(formTab, pasteTab);
  root.append(h("section", { class: "new-sweep" }, h("div", { class: "toolbar" }, h("h1", {}, "New sweep")),
    registry.error ? h("p", { class: "error" }, `Cannot load the registered models: ${errorText(registry.error)}`) : null,
    tabs, form.element, paste.element));
  show("form");
}

// -- submitting ------------------------------------------------------------------------------------

/**
 * Validate, then create. `send` posts one body to a path; `report` shows problems (or clears them with []).
 * Returns the created sweep, or null when the spec has problems.
 */
async function checkAndCreate(send, report, status, { create }) {
  report([]);
  status.textContent = "Checking…";
  try {
    const plan = await send("/sweeps/validate");
    status.textContent = `Valid: ${plan.total_trials} trial${plan.total_trials === 1 ? "" : "s"}` +
      (plan.space_size === null ? " (an endless space)." : ` from ${plan.space_size} configuration${plan.space_size === 1 ? "" : "s"}.`);
    if (!create) return null;
    status.textContent = "Creating…";
    const sweep = await send("/sweeps");
    location.hash = `#/sweeps/${sweep.id}`;
    return sweep;
  } catch (error) {
    status.textContent = "";
    if (error instanceof ApiError && error.status === 422 && error.problems.length) report(error.problems);
    else report([{ path: [], msg: errorText(error) }]);
    return null;
  }
}

// -- the form --------------------------------------------------------------------------------------

function field(label, control, loc, hint) {
  return h("label", { class: "field", dataset: { loc } }, h("span", { class: "field-label" }, label), control,
    hint ? h("small", { class: "muted" }, hint) : null, h("span", { class: "field-error", role: "alert" }));
}

function options(values, selected) {
  return values.map((value) => h("option", { value, selected: value === selected }, value));
}

function sweepForm(registry) {
  const models = registry.models.length ? registry.models : ["mlp"];
  const name = h("input", { name: "name", required: true, maxlength: 200, placeholder: "digits-mlp", autocomplete: "off" });
  const model = h("select", { name: "model" }, options(models, models.includes("mlp") ? "mlp" : models[0]));
  const datasetList = h("datalist", { id: "registered-datasets" }, registry.datasets.map((value) => h("option", { value })));
  const dataset = h("input", { name: "dataset", list: "registered-datasets", value: registry.datasets.includes("digits") ? "digits" : "", autocomplete: "off" });
  const formats = registry.dataset_formats?.map((f) => `${f}:<path>`).join(" or ");
  const metric = h("input", { name: "objective-metric", value: "val_accuracy" });
  const goal = h("select", { name: "objective-goal" }, options(["maximize", "minimize"], "maximize"));
  const strategy = h("select", { name: "strategy" }, options(["random", "grid"], "random"));
  const maxTrials = h("input", { name: "max_trials", inputmode: "numeric", value: "10" });
  const epochs = h("input", { name: "epochs", inputmode: "numeric", value: "10" });
  const rows = h("tbody");
  const hparamsTable = h("table", { class: "hparams" },
    h("thead", {}, h("tr", {}, ["Name", "Domain", "Values", "Min", "Max", "Log", ""].map((text) => h("th", { scope: "col" }, text)))),
    rows);
  const general = h("div", { class: "form-errors", role: "alert" });
  const status = h("p", { class: "plan", role: "status" });
  const state = { touched: false };

  const addRow = (preset = {}) => rows.append(hparamRow(preset));
  addRow({ name: "units", type: "discrete", values: "16, 32, 64" });
  addRow({ name: "learning_rate", type: "real_interval", min: "0.001", max: "0.1", log: true });

  const element = h("form", { class: "sweep-form", novalidate: true, "aria-label": "New sweep",
    oninput: () => { state.touched = true; } },
    h("fieldset", {}, h("legend", {}, "Sweep"),
      field("Name", name, "name"), field("Model", model, "model"),
      field("Dataset", dataset, "dataset", formats ? `registered, or a file: ${formats}` : null), datasetList),
    h("fieldset", {}, h("legend", {}, "Objective"), field("Metric", metric, "objective.metric"), field("Goal", goal, "objective.goal")),
    h("fieldset", {}, h("legend", {}, "Search"),
      field("Strategy", strategy, "search.strategy"), field("Max trials", maxTrials, "search.max_trials", "blank: the whole grid")),
    h("fieldset", {}, h("legend", {}, "Training"), field("Epochs", epochs, "train.epochs")),
    h("fieldset", { class: "wide" }, h("legend", {}, "Hyperparameters"),
      h("div", { class: "field", dataset: { loc: "hparams" } }, hparamsTable, h("span", { class: "field-error", role: "alert" })),
      h("button", { type: "button", class: "add-hparam", onclick: () => addRow() }, "+ Add hyperparameter")),
    general, status,
    h("div", { class: "actions" },
      h("button", { type: "button", onclick: () => submit(false) }, "Check"),
      h("button", { type: "submit", class: "primary" }, "Create sweep")));
  element.addEventListener("submit", (event) => { event.preventDefault(); submit(true); });

  const spec = () => {
    const hparams = {};
    for (const row of rows.children) hparams[row.querySelector("[name=hparam-name]").value.trim()] = row.hparam();
    const search = { strategy: strategy.value };
    if (maxTrials.value.trim()) search.max_trials = scalar(maxTrials.value);
    const train = {};
    if (epochs.value.trim()) train.epochs = scalar(epochs.value);
    return { name: name.value, model: model.value, dataset: dataset.value.trim(),
      objective: { metric: metric.value.trim(), goal: goal.value }, hparams, search, train };
  };

  const report = (problems) => showProblems(element, general, problems);
  async function submit(create) {
    const duplicates = duplicateNames(rows);
    if (duplicates.length) {
      report(duplicates.map((n) => ({ path: ["hparams", n], msg: `the name '${n}' is used by more than one row` })));
      return;
    }
    await checkAndCreate((path) => api(path, { method: "POST", json: spec() }), report, status, { create });
  }

  return { element, spec, get touched() { return state.touched; } };
}

function hparamRow({ name = "", type = "discrete", values = "", min = "", max = "", log = false } = {}) {
  const nameInput = h("input", { name: "hparam-name", value: name, placeholder: "dropout", "aria-label": "hparam name", autocomplete: "off" });
  const domain = h("select", { name: "hparam-type", "aria-label": "domain" }, options(DOMAINS, type));
  const valuesInput = h("input", { name: "hparam-values", value: values, "aria-label": "values" });
  const minInput = h("input", { name: "hparam-min", value: min, inputmode: "decimal", "aria-label": "min" });
  const maxInput = h("input", { name: "hparam-max", value: max, inputmode: "decimal", "aria-label": "max" });
  const logInput = h("input", { type: "checkbox", name: "hparam-log", checked: log, "aria-label": "log scale" });
  const cell = (control, sub) => h("td", { class: "field", dataset: { sub } }, control, h("span", { class: "field-error", role: "alert" }));
  const row = h("tr", { class: "hparam-row" },
    cell(nameInput, ""), h("td", {}, domain), cell(valuesInput, "values"), cell(minInput, "min"), cell(maxInput, "max"),
    h("td", {}, logInput),
    h("td", {}, h("button", { type: "button", class: "link remove", "aria-label": "remove", onclick: () => row.remove() }, "✕")));
  const sync = () => {
    const interval = domain.value.endsWith("_interval");
    valuesInput.disabled = interval;
    minInput.disabled = maxInput.disabled = logInput.disabled = !interval;
    valuesInput.placeholder = domain.value === "fixed" ? "0.9" : interval ? "" : "16, 32, 64  or  adam, sgd";
    // Each cell answers to its hparam's field path, e.g. hparams.dropout.max; the name cell to the whole hparam.
    const key = nameInput.value.trim();
    for (const td of row.querySelectorAll("td.field")) {
      const sub = td.dataset.sub === "values" && domain.value === "fixed" ? "value" : td.dataset.sub;
      td.dataset.loc = ["hparams", key, sub].filter((part, i) => i < 2 || part).join(".");
    }
  };
  domain.addEventListener("change", sync);
  nameInput.addEventListener("input", sync);
  sync();
  row.hparam = () => {
    if (domain.value === "fixed") return { type: "fixed", value: scalar(valuesInput.value) };
    if (domain.value === "discrete") return { type: "discrete", values: list(valuesInput.value) };
    const hparam = { type: domain.value, min: scalar(minInput.value), max: scalar(maxInput.value) };
    if (logInput.checked) hparam.log = true;
    return hparam;
  };
  return row;
}

function duplicateNames(rows) {
  const seen = new Set();
  const duplicates = new Set();
  for (const input of rows.querySelectorAll("[name=hparam-name]")) {
    const name = input.value.trim();
    if (seen.has(name)) duplicates.add(name);
    seen.add(name);
  }
  return [...duplicates];
}

/** A value typed in a box: a number, true/false, or text (quotes removed); blank is left out (undefined). */
function scalar(text) {
  const value = text.trim();
  if (!value) return undefined;
  if (NUMBER.test(value)) return Number(value);
  if (value === "true" || value === "false") return value === "true";
  return value.replace(/^(["'])(.*)\1$/, "$2");
}

function list(text) {
  return text.split(",").map(scalar).filter((value) => value !== undefined);
}

/** Put each problem next to the field its path names (the longest matching prefix), the rest on top. */
function showProblems(form, general, problems) {
  const slots = new Map([...form.querySelectorAll("[data-loc]")].map((element) => [element.dataset.loc, element]));
  for (const element of form.querySelectorAll(".invalid")) element.classList.remove("invalid");
  for (const element of form.querySelectorAll(".field-error")) element.textContent = "";
  for (const element of form.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
  general.replaceChildren();
  let first = null;
  for (const { path, msg } of problems) {
    let depth = path.length;
    while (depth > 0 && !slots.has(path.slice(0, depth).join("."))) depth -= 1;
    const slot = depth > 0 ? slots.get(path.slice(0, depth).join(".")) : null;
    const rest = path.slice(depth).join(".");
    if (!slot) {
      general.append(h("p", { class: "error" }, path.length ? `${path.join(".")}: ${msg}` : msg));
      continue;
    }
    slot.classList.add("invalid");
    const error = slot.querySelector(":scope > .field-error");
    error.textContent = [error.textContent, rest ? `${rest}: ${msg}` : msg].filter(Boolean).join("; ");
    const control = slot.querySelector("input, select, textarea");
    control?.setAttribute("aria-invalid", "true");
    first ??= control;
  }
  first?.focus();
}

// -- the paste box ---------------------------------------------------------------------------------

function pasteBox() {
  const text = h("textarea", { name: "spec", rows: 18, spellcheck: false, placeholder: EXAMPLE, "aria-label": "sweep spec, YAML or JSON" });
  const problems = h("ul", { class: "problems", role: "alert" });
  const status = h("p", { class: "plan", role: "status" });
  const report = (found) => {
    text.toggleAttribute("aria-invalid", found.length > 0);
    problems.replaceChildren(...found.map(({ path, msg }) => {
      const line = lineOf(text.value, path) ?? lineInMessage(msg);
      return h("li", {}, line ? h("span", { class: "line" }, `line ${line}`) : null,
        path.length ? h("code", {}, path.join(".")) : null, " ", msg.replace(/^line \d+: /, ""));
    }));
  };
  const submit = (create) => checkAndCreate((path) => api(path, { method: "POST", yaml: text.value }), report, status, { create });
  const element = h("form", { class: "paste", novalidate: true, "aria-label": "Paste a spec",
    onsubmit: (event) => { event.preventDefault(); submit(true); } },
    h("p", { class: "muted" }, "A spec as in a spec file, YAML or JSON (see docs/spec.md)."),
    text, problems, status,
    h("div", { class: "actions" },
      h("button", { type: "button", onclick: () => submit(false) }, "Check"),
      h("button", { type: "submit", class: "primary" }, "Create sweep")));
  return { element, text };
}

/** The line a field path points to in YAML or JSON text, found key by key; null when not found. */
export function lineOf(text, path) {
  const lines = text.split("\n");
  let from = 0;
  let found = null;
  for (const key of path) {
    if (/^\d+$/.test(key)) continue; // a list index: its key's line is close enough
    const escaped = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const pattern = new RegExp(`(^|[\\s{,])(["']?)${escaped}\\2\\s*:`);
    let hit = -1;
    for (let i = from; i < lines.length; i++) {
      if (pattern.test(lines[i])) { hit = i; break; }
    }
    if (hit < 0) break;
    found = hit + 1;
    from = hit;
  }
  return found;
}

function lineInMessage(msg) {
  const match = /\bline (\d+)/.exec(msg);
  return match ? Number(match[1]) : null;
}
