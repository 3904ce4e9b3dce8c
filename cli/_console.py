"""What the `sweeper` command shows: sweep, trial and worker tables, and a live progress bar of a running sweep."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

FINISHED_STATES = ("completed", "failed", "pruned", "cancelled")
ACTIVE_STATUSES = ("running", "paused")
WORKER_STATE_STYLES = {"idle": "green", "busy": "cyan", "lost": "bold red"}
TRIAL_STATE_STYLES = {"running": "cyan", "completed": "green", "failed": "red", "pruned": "magenta"}


def finished_count(sweep: dict[str, Any]) -> int:
    counts = sweep.get("trial_counts") or {}
    return sum(counts.get(state, 0) for state in FINISHED_STATES)


def best_value(sweep: dict[str, Any]) -> float | None:
    best = sweep.get("best_trial")
    if not best:
        return None
    return best["metrics"].get(sweep["spec"]["objective"]["metric"])


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def search_size(sweep: dict[str, Any]) -> str:
    """How large a sweep's search is, in words: "grid of 24 configurations, 24 trials"."""
    search = sweep["spec"].get("search", {})
    strategy, size, total = search.get("strategy", "random"), sweep.get("space_size"), sweep["total_trials"]
    trials = f"{total:,} trial{'s' if total != 1 else ''}"
    if size is None:
        return f"{strategy} search over a continuous space, {trials} (search.max_trials)"
    where = "grid" if strategy == "grid" else "random search over a space"
    limited = " (search.max_trials)" if total < size else ""
    return f"{where} of {size:,} configuration{'s' if size != 1 else ''}, {trials}{limited}"


def stopping_text(spec: dict[str, Any]) -> str:
    """The stopping rule in words, to follow search_size: "; asha stops trials at 1, 3, 9, 27 epochs"."""
    stopping = spec.get("stopping") or {}
    rule = stopping.get("rule", "none")
    if rule == "none":
        return ""
    first, epochs = stopping.get("min_epochs", 1), spec.get("train", {}).get("epochs", 10)
    if rule == "median":
        return f"; median stops trials below the median of completed ones from epoch {first} on"
    factor = stopping.get("reduction_factor", 3)
    rungs = []
    while first * factor ** len(rungs) <= epochs:
        rungs.append(first * factor ** len(rungs))
    if rule == "hyperband":
        return (f"; hyperband keeps 1 in {factor} trials at each rung, in brackets whose first rung is at "
                f"{', '.join(map(str, rungs))} epochs")
    return f"; {rule} keeps 1 in {factor} trials at {', '.join(map(str, rungs))} epochs"


def sweeps_table(sweeps: list[dict[str, Any]]) -> Table:
    table = Table(title="Sweeps")
    for column in ("id", "name", "status", "finished", "best", "created"):
        table.add_column(column)
    for sweep in sweeps:
        objective = sweep["spec"]["objective"]
        best = best_value(sweep)
        table.add_row(str(sweep["id"]), sweep["name"], sweep["status"],
                      f"{finished_count(sweep)}/{sweep['total_trials']}",
                      "" if best is None else f"{objective['metric']}={best:.4g}", str(sweep.get("created_at", "")))
    return table


def epochs_trained(trial: dict[str, Any]) -> int | None:
    """How many epochs a pruned trial trained (its `pruned_at_epoch` counts from 0, this from 1); None otherwise."""
    at = trial.get("pruned_at_epoch")
    return at + 1 if trial["state"] == "pruned" and at is not None else None


def trial_state(trial: dict[str, Any]) -> str:
    """A trial's state as the page shows it: a pruned one's reads "pruned @ 3", 3 being the epochs it trained."""
    epochs = epochs_trained(trial)
    return trial["state"] if epochs is None else f"pruned @ {epochs}"


def trials_table(sweep: dict[str, Any], trials: list[dict[str, Any]]) -> Table:
    metric = sweep["spec"]["objective"]["metric"]
    # A multi-objective sweep: every objective gets a column, and its Pareto front is marked.
    others = [objective["metric"] for objective in sweep["spec"].get("objectives", [])[1:]]
    front = set(sweep.get("pareto_front") or [])
    names = list(sweep["spec"]["hparams"])
    best = (sweep.get("best_trial") or {}).get("id")
    counts = _counts(sweep)
    table = Table(title=f"Sweep {sweep['id']} {sweep['name']}: {sweep['status']}, "
                        f"{finished_count(sweep)}/{sweep['total_trials']} finished"
                        + (f" ({counts})" if counts else ""))
    for column in ("trial", "state", metric, *others, *names, "attempts"):
        table.add_column(column)
    for trial in trials:
        style = "bold green" if trial["id"] == best or trial["id"] in front else None
        state = Text(trial_state(trial), style=TRIAL_STATE_STYLES.get(trial["state"], ""))
        marker = " ◆" if trial["id"] in front else ""
        table.add_row(f"{trial['id']}{marker}", state,
                      *(_format(trial["metrics"].get(name)) for name in (metric, *others)),
                      *(_format(trial["hparams"].get(name)) for name in names), str(trial["attempts"]),
                      style=style)
    notes = []
    if front:
        notes.append("◆: on the Pareto front")
    if any(epochs_trained(trial) is not None for trial in trials):
        rule = (sweep["spec"].get("stopping") or {}).get("rule", "stopping")
        notes.append(f"pruned @ N: stopped by the {rule} rule after N epochs trained")
    if notes:
        table.caption = "; ".join(notes)
    return table


def workers_table(workers: list[dict[str, Any]], now: datetime | None = None) -> Table:
    """One row per worker: where it runs, what it does, and how long ago it last called."""
    now = now or datetime.now(UTC)
    table = Table(title=f"Workers ({_worker_counts(workers)})" if workers else "Workers: none seen yet")
    for column in ("worker", "host", "gpu", "state", "trial", "last heartbeat"):
        table.add_column(column)
    for worker in workers:
        state = worker["state"]
        table.add_row(worker["id"], worker["host"] or "", worker["gpu"] or "cpu",
                      f"[{WORKER_STATE_STYLES.get(state, 'default')}]{state}[/]", _format(worker["trial_id"]),
                      _ago(worker["last_heartbeat_at"], now))
    return table


def _worker_counts(workers: list[dict[str, Any]]) -> str:
    counts = {state: sum(worker["state"] == state for worker in workers) for state in WORKER_STATE_STYLES}
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n)


def _ago(timestamp: str, now: datetime) -> str:
    """"12s ago", "5m ago", "3h ago", "2d ago": how long since an ISO timestamp."""
    seconds = max(0.0, (now - datetime.fromisoformat(timestamp)).total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def watch(client: Any, sweep_id: int, console: Console, poll_interval: float = 1.0) -> dict[str, Any]:
    """Show a progress bar of finished/total trials and the best value until the sweep ends."""
    sweep = client.get_sweep(sweep_id)
    metric = sweep["spec"]["objective"]["metric"]
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[best]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(sweep["name"], total=sweep["total_trials"], best="")
        while True:
            best = best_value(sweep)
            progress.update(task, completed=finished_count(sweep),
                            best="" if best is None else f"best {metric}={best:.4f}")
            if sweep["status"] not in ACTIVE_STATUSES:
                return sweep
            time.sleep(poll_interval)
            sweep = client.get_sweep(sweep_id)


def summary(sweep: dict[str, Any], logdir: str, console: Console) -> None:
    """The end of a sweep: the best trial and the command that opens TensorBoard on it."""
    best = sweep.get("best_trial")
    metric = sweep["spec"]["objective"]["metric"]
    console.print(f"Sweep {sweep['id']} {sweep['name']} {sweep['status']}: "
                  f"{finished_count(sweep)}/{sweep['total_trials']} trials finished "
                  f"({_counts(sweep)})")
    front = sweep.get("pareto_front")
    if front:
        names = ", ".join(objective["metric"] for objective in sweep["spec"]["objectives"])
        console.print(f"Pareto front ({names}): trial{'s' if len(front) > 1 else ''} "
                      f"{', '.join(map(str, front))}; sweeper status {sweep['id']} shows their values")
    elif best:
        console.print(f"Best trial {best['id']}: {metric}={best['metrics'][metric]:.4f}")
        for name, value in best["hparams"].items():
            console.print(f"  {name} = {_format(value)}")
    else:
        console.print("No trial completed.")
    console.print(f"Open TensorBoard: sweeper tensorboard {sweep['id']} --logdir {logdir}")


def _counts(sweep: dict[str, Any]) -> str:
    return ", ".join(f"{n} {state}" for state, n in (sweep.get("trial_counts") or {}).items() if n)
