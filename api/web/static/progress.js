// A running trial's progress: the epoch it is at out of the sweep's epochs, and when it should finish at the
// pace of its epochs so far. Shared by the sweep page's trials table and the workers view.

import { h } from "./dom.js";

/**
 * Epochs done, of how many, and the seconds left at the pace so far (null until an epoch is done).
 * The pace is the time since the trial's current attempt started over the epochs reported since: a trial
 * resumed from a checkpoint also holds the epochs of earlier attempts, which took none of that time.
 * @param {{state: string, started_at?: string|null, history?: {epoch: number, reported_at?: string}[]}} trial
 * @param {number} epochs  the sweep's train.epochs
 * @param {number} [now]  ms since the epoch
 */
export function trialProgress(trial, epochs, now = Date.now()) {
  const history = trial.history ?? [];
  const done = history.length ? Math.max(...history.map((entry) => entry.epoch)) + 1 : 0;
  const started = trial.started_at ? Date.parse(trial.started_at) : NaN;
  // Entries without reported_at (from an older server) count as this attempt's, as they did before.
  const thisAttempt = history.filter((entry) => !entry.reported_at || !(Date.parse(entry.reported_at) < started)).length;
  let secondsLeft = null;
  if (thisAttempt > 0 && Number.isFinite(started) && epochs > done) {
    const perEpoch = Math.max(0, now - started) / 1000 / thisAttempt;
    secondsLeft = perEpoch * (epochs - done);
  } else if (done >= epochs && epochs > 0) secondsLeft = 0;
  return { done, epochs, secondsLeft };
}

/** "45 s", "12 min", "3 h 5 min". */
export function formatDuration(seconds) {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.round((seconds % 3600) / 60);
  return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
}

/** A small bar with "epoch 3 of 10 · ~2 min left". */
export function progressLine({ done, epochs, secondsLeft }) {
  const share = epochs > 0 ? Math.min(1, done / epochs) : 0;
  const eta = secondsLeft === null ? "estimating…" : secondsLeft === 0 ? "finishing" : `~${formatDuration(secondsLeft)} left`;
  return h("span", { class: "epoch-progress", title: `${done} of ${epochs} epochs done; ${eta}, at the pace of the epochs so far` },
    h("span", { class: "mini-bar" }, h("span", { class: "mini-fill", style: `width: ${(share * 100).toFixed(0)}%` })),
    h("span", { class: "epoch-text" }, `epoch ${done} of ${epochs}`),
    h("span", { class: "eta muted" }, ` · ${eta}`));
}
