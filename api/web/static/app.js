// The page's entry point: hash routes to views. A view is `mount(root, params)`, returning its cleanup
// (stopping its polling), which runs before the next view mounts.
//   #/              the sweeps list
//   #/new           a new sweep (form, or a pasted YAML/JSON spec)
//   #/sweeps/{id}   one sweep: progress, chart, analysis, trials, a trial's curves, controls, exports, TensorBoard
//   #/workers       every worker seen, its state and the trial it runs

import { api, logout } from "./api.js";
import { h } from "./dom.js";
import { mountSweeps } from "./sweeps.js";

const routes = [
  [/^#?\/?$/, (root) => mountSweeps(root)],
  [/^#\/new$/, async (root) => (await import("./new_sweep.js")).mountNewSweep(root)],
  [/^#\/sweeps\/(\d+)$/, async (root, [, id]) => (await import("./sweep.js")).mountSweep(root, Number(id))],
  [/^#\/workers$/, async (root) => (await import("./workers.js")).mountWorkers(root)],
];

let cleanup = null;
let generation = 0;

async function route() {
  const root = document.getElementById("view");
  cleanup?.();
  cleanup = null;
  const mine = ++generation;
  root.replaceChildren();
  const hash = location.hash || "#/";
  for (const link of document.querySelectorAll(".topbar nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === hash);
  }
  const match = routes.find(([pattern]) => pattern.test(hash));
  if (!match) {
    root.append(h("p", { class: "empty" }, "Nothing here. ", h("a", { href: "#/" }, "Back to the sweeps")));
    return;
  }
  const stop = await match[1](root, hash.match(match[0]));
  // A quicker navigation may have replaced this view while its module loaded.
  if (mine === generation) cleanup = stop ?? null;
  else stop?.();
}

async function showLogout() {
  try {
    const session = await api("/session");
    document.getElementById("logout").hidden = session?.role === "open";
  } catch {
    // An older server without sessions: nothing to log out of.
  }
}

document.getElementById("logout").addEventListener("click", async () => {
  await logout();
  location.reload();
});
document.addEventListener("sweeper:login", showLogout);
window.addEventListener("hashchange", route);
route();
showLogout();
