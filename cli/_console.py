"""What the `sweeper` command shows: sweep, trial and worker tables, and a live progress bar of a running sweep.

The tables fit an 80-column terminal for a typical sweep: trials go by their number in the sweep, hparams
that every trial shares are listed once above the table rather than given columns, times read "14:03" or
"Dec 03", durations "2m 10s", and an error is cut to the width left.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

FINISHED_STATES = ("completed", "failed", "pruned", "cancelled")
ACTIVE_STATUSES = ("running", "paused")
UNSUCCESSFUL = ("failed", "cancelled")
"""How a sweep may end that `submit --wait` and `run` answer with exit code 1."""
SWEEP_STATUS_STYLES = {"running": "cyan", "paused": "yellow", "completed": "green", "failed": "bold red",
                       "cancelled": "magenta"}
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


def _format(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "" if value is None else str(value)


def search_size(sweep: dict[str, Any]) -> str:
    """How large a sweep's search is, in words: "grid of 24 configurations, 24 trials"."""
    search = sweep["spec"].get("search", {})
    strategy, size, total = search.get("strategy", "random"), sweep.get("space_size"), sweep["total_trials"]
    trials = f"{total:,} trial{'s' if total != 1 else ''}"
    if strategy == "pbt":
        return f"Population Based Training of {total:,} members, each one trial (search.population)"
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


def sweeps_table(sweeps: list[dict[str, Any]], now: datetime | None = None) -> Table:
    """One row per sweep: its status, trials finished of all (failed ones counted in red), best value, start."""
    now = now or datetime.now(UTC)
    table = Table(title="Sweeps", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))
    for column in ("id", "name", "status", "finished", "best", "created"):
        table.add_column(column, no_wrap=column != "name", justify="right" if column == "id" else "left")
    for sweep in sweeps:
        objective = sweep["spec"]["objective"]
        best = best_value(sweep)
        failed = (sweep.get("trial_counts") or {}).get("failed", 0)
        finished = Text(f"{finished_count(sweep)}/{sweep['total_trials']}")
        if failed:
            finished.append(f" {failed} failed", style="red")
        table.add_row(str(sweep["id"]), sweep["name"],
                      Text(sweep["status"], style=SWEEP_STATUS_STYLES.get(sweep["status"], "")), finished,
                      "" if best is None else f"{objective['metric']}={best:.4g}",
                      short_time(sweep.get("created_at"), now))
    return table


def epochs_trained(trial: dict[str, Any]) -> int | None:
    """How many epochs a pruned trial trained (its `pruned_at_epoch` counts from 0, this from 1); None otherwise."""
    at = trial.get("pruned_at_epoch")
    return at + 1 if trial["state"] == "pruned" and at is not None else None


def trial_state(trial: dict[str, Any]) -> str:
    """A trial's state as the page shows it: a pruned one's reads "pruned @ 3", 3 being the epochs it trained."""
    epochs = epochs_trained(trial)
    return trial["state"] if epochs is None else f"pruned @ {epochs}"


def shared_hparams(sweep: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The hparams with one value in every trial shown (a bare value in the spec, or one the search never
    varied), in the spec's order: listed once above the table, not as columns."""
    shared = {}
    for name, domain in sweep["spec"]["hparams"].items():
        if not isinstance(domain, dict) or "type" not in domain:  # a bare value: fixed in the spec
            shared[name] = domain
            continue
        values = {repr(trial["hparams"].get(name)) for trial in trials}
        if len(values) == 1 and trials and (len(trials) > 1 or len(domain.get("values", ())) == 1):
            shared[name] = trials[0]["hparams"].get(name)
    return shared


def print_trials(console: Console, sweep: dict[str, Any], trials: list[dict[str, Any]], *,
                 now: datetime | None = None, shown: str = "number") -> None:
    """A sweep's trials: the hparams they share on one line, the table of what differs (fitted to the
    console's width), and under it each distinct error that its error column refers to."""
    shared = shared_hparams(sweep, trials)
    if shared:
        console.print(Text("Same in every trial: " + ", ".join(f"{name}={_format(value)}"
                                                             for name, value in shared.items())))
    console.print(trials_table(sweep, trials, now=now, shared=shared, shown=shown, fit=(console, console.width)))
    for key, error in error_keys(trials).items():
        console.print(Text.assemble((f"{key}", "red"), f" {error}"))


def error_keys(trials: list[dict[str, Any]]) -> dict[str, str]:
    """Each distinct error (its first line) among the trials, by the short key the error column shows: E1, E2..."""
    errors = dict.fromkeys(_first_line(trial.get("error")) for trial in trials if trial.get("error"))
    return {f"E{number}": error for number, error in enumerate(errors, start=1)}


def trials_table(sweep: dict[str, Any], trials: list[dict[str, Any]], *, now: datetime | None = None,
                 shared: dict[str, Any] | None = None, shown: str = "number",
                 fit: tuple[Console, int] | None = None) -> Table:
    """One row per trial, by its number in the sweep: state, objective(s), the hparams that vary, how long it
    ran, and its error's key (error_keys). The title says the sweep's status and counts; `shown` the order.

    `fit` (a console and a width): when the table is wider, its headers break at underscores, then the time
    column goes.
    """
    layout = _TrialColumns(sweep, trials, shared_hparams(sweep, trials) if shared is None else shared)
    when = now or datetime.now(UTC)
    table = layout.table(sweep, trials, when, shown)
    if fit is not None:
        console, width = fit
        for change in ({"broken_headers": True}, {"broken_headers": True, "with_time": False}):
            if _natural_width(console, table) <= width:
                break
            table = layout.table(sweep, trials, when, shown, **change)
    return table


def _natural_width(console: Console, table: Table) -> int:
    """How wide the table is with no cell cut: measured on a console as wide as it needs."""
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


class _TrialColumns:
    """The columns of a sweep's trials table, and the table in a given layout."""

    def __init__(self, sweep: dict[str, Any], trials: list[dict[str, Any]], shared: dict[str, Any]):
        self.objectives = [sweep["spec"]["objective"]["metric"],
                           *(objective["metric"] for objective in sweep["spec"].get("objectives", [])[1:])]
        self.hparams = [name for name in sweep["spec"]["hparams"] if name not in shared]
        self.retried = any(trial["attempts"] > 1 for trial in trials)
        self.errors = any(trial.get("error") for trial in trials)

    def table(self, sweep: dict[str, Any], trials: list[dict[str, Any]], now: datetime, shown: str, *,
              broken_headers: bool = False, with_time: bool = True) -> Table:
        keys = {error: key for key, error in error_keys(trials).items()}
        front = set(sweep.get("pareto_front") or [])
        best = (sweep.get("best_trial") or {}).get("id")
        counts = _counts(sweep)
        order = "" if shown in ("number", "index") else f", by {shown}"
        # No vertical rules and one space between columns: a sweep's columns fit 80 characters.
        table = Table(title=f"Sweep {sweep['id']} {sweep['name']}: {sweep['status']}, "
                            f"{finished_count(sweep)}/{sweep['total_trials']} finished"
                            + (f" ({counts})" if counts else "") + order,
                      box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))

        def header(name: str) -> str:
            return name.replace("_", "_\n") if broken_headers else name

        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("state", no_wrap=True)
        for name in self.objectives:
            table.add_column(header(name), justify="right", no_wrap=True)
        for name in self.hparams:
            numeric = all(isinstance(trial["hparams"].get(name), int | float | None) for trial in trials)
            table.add_column(header(name), justify="right" if numeric else "left", no_wrap=True)
        if self.retried:
            table.add_column("tries", justify="right", no_wrap=True)
        if with_time:
            table.add_column("time", justify="right", no_wrap=True)
        if self.errors:
            table.add_column("error", no_wrap=True)
        for trial in trials:
            style = "bold green" if trial["id"] == best or trial["id"] in front else None
            marker = "◆" if trial["id"] in front else ""
            row: list[Any] = [f"{marker}{trial.get('number', trial.get('index', 0) + 1)}",
                              Text(trial_state(trial), style=TRIAL_STATE_STYLES.get(trial["state"], "")),
                              *(_format(trial["metrics"].get(name)) for name in self.objectives),
                              *(_format(trial["hparams"].get(name), digits=3) for name in self.hparams)]
            if self.retried:
                row.append(str(trial["attempts"]))
            if with_time:
                row.append(trial_time(trial, now))
            if self.errors:
                row.append(Text(keys.get(_first_line(trial.get("error")), ""), style="red"))
            table.add_row(*row, style=style)
        notes = []
        if front:
            notes.append("◆: on the Pareto front")
        if any(epochs_trained(trial) is not None for trial in trials):
            rule = (sweep["spec"].get("stopping") or {}).get("rule", "stopping")
            notes.append(f"pruned @ N: stopped by the {rule} rule after N epochs trained")
        if sweep.get("reason"):
            notes.append(f"{sweep['status']}: {sweep['reason']}")
        if notes:
            table.caption = "; ".join(notes)
        return table


def trial_time(trial: dict[str, Any], now: datetime) -> str:
    """How long the trial ran ("2m 10s"), or has run so far while it runs; empty before it started."""
    started = _parse(trial.get("started_at"))
    if started is None:
        return ""
    finished = _parse(trial.get("finished_at")) or (now if trial["state"] == "running" else None)
    return "" if finished is None else duration((finished - started).total_seconds())


def duration(seconds: float) -> str:
    """"4s", "2m 10s", "3h 05m", "2d 4h": two units at most, to stay short."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def short_time(timestamp: str | None, now: datetime) -> str:
    """An ISO timestamp in local time, as short as it can be: "14:03" today, "Dec 03" this year, else
    "2025-12-03"."""
    moment = _parse(timestamp)
    if moment is None:
        return ""
    local, today = moment.astimezone(), now.astimezone()
    if local.date() == today.date():
        return local.strftime("%H:%M")
    if local.year == today.year:
        return local.strftime("%b %d")
    return local.strftime("%Y-%m-%d")


def _parse(timestamp: str | None) -> datetime | None:
    if not timestamp:
        return None
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def workers_table(workers: list[dict[str, Any]], now: datetime | None = None) -> Table:
    """One row per worker: where it runs, what it does, and how long ago it last called."""
    now = now or datetime.now(UTC)
    table = Table(title=f"Workers ({_worker_counts(workers)})" if workers else "Workers: none seen yet")
    for column in ("worker", "host", "gpu", "state", "sweep/trial", "last heartbeat"):
        table.add_column(column)
    for worker in workers:
        state = worker["state"]
        held = "" if worker.get("trial_id") is None else (
            f"{worker['sweep_id']}/{worker['trial_number']}" if worker.get("trial_number") else str(worker["trial_id"]))
        table.add_row(worker["id"], worker["host"] or "", worker["gpu"] or "cpu",
                      f"[{WORKER_STATE_STYLES.get(state, 'default')}]{state}[/]", held,
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
    """Show a progress bar of finished/total trials, the failed ones, and the best value until the sweep ends."""
    sweep = client.get_sweep(sweep_id)
    metric = sweep["spec"]["objective"]["metric"]
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[failed]}"), TextColumn("{task.fields[best]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(sweep["name"], total=sweep["total_trials"], best="", failed="")
        while True:
            best = best_value(sweep)
            failed = (sweep.get("trial_counts") or {}).get("failed", 0)
            progress.update(task, completed=finished_count(sweep), total=sweep["total_trials"],
                            failed=f"[red]{failed} failed[/]" if failed else "",
                            best="" if best is None else f"best {metric}={best:.4f}")
            if sweep["status"] not in ACTIVE_STATUSES:
                return sweep
            time.sleep(poll_interval)
            sweep = client.get_sweep(sweep_id)


def summary(sweep: dict[str, Any], logdir: str, console: Console,
            trials: list[dict[str, Any]] | None = None) -> None:
    """The end of a sweep: why it failed or was cancelled, its first error, the best trial (or its Pareto front,
    by trial number when `trials` are given), and the command that opens TensorBoard on it."""
    best = sweep.get("best_trial")
    metric = sweep["spec"]["objective"]["metric"]
    console.print(f"Sweep {sweep['id']} {sweep['name']} {sweep['status']}: "
                  f"{finished_count(sweep)}/{sweep['total_trials']} trials finished "
                  f"({_counts(sweep)})", highlight=False)
    if sweep.get("reason"):
        console.print(Text(f"  {sweep['reason']}", style="red" if sweep["status"] == "failed" else ""))
    if sweep.get("error") and sweep["error"] not in (sweep.get("reason") or ""):
        console.print(Text(f"First failure: {sweep['error']}", style="red"))
    front = sweep.get("pareto_front")
    if front:
        numbers = {trial["id"]: trial["number"] for trial in trials or []}
        names = ", ".join(objective["metric"] for objective in sweep["spec"]["objectives"])
        console.print(f"Pareto front ({names}): trial{'s' if len(front) > 1 else ''} "
                      f"{', '.join(str(numbers.get(trial_id, trial_id)) for trial_id in front)}; "
                      f"sweeper status {sweep['id']} shows their values")
    elif best:
        console.print(f"Best trial {best.get('number', best['id'])}: {metric}={best['metrics'][metric]:.4f}")
        for name, value in best["hparams"].items():
            console.print(f"  {name} = {_format(value)}")
        lineage = best.get("lineage") or []
        if len(lineage) > 1:
            # Its hparams above are its last segment's: the schedule that won is the whole lineage.
            console.print(f"  Its schedule (Population Based Training, {len(lineage)} segments):")
            for line in schedule_lines(lineage, sweep["spec"]):
                console.print(f"    {line}", highlight=False)
    elif sweep["status"] not in UNSUCCESSFUL:
        console.print("No trial completed.")
    console.print(f"Open TensorBoard: sweeper tensorboard {sweep['id']} --logdir {logdir}")


def schedule_lines(lineage: list[dict[str, Any]], spec: dict[str, Any]) -> list[str]:
    """A PBT member's segments, one line each: its epochs (from 1), where its weights came from, and its
    mutable hparams."""
    mutable = (spec.get("search") or {}).get("mutable") or []
    epochs = (spec.get("train") or {}).get("epochs")
    lines = []
    for position, segment in enumerate(lineage):
        end = lineage[position + 1]["start_epoch"] if position + 1 < len(lineage) else epochs
        span = f"epochs {segment['start_epoch'] + 1}-{end}" if end is not None else \
            f"epochs {segment['start_epoch'] + 1}-"
        if segment.get("parent_number") is not None:
            span += f", copied from member {segment['parent_number']} after epoch {segment['parent_epoch'] + 1}"
        values = ", ".join(f"{name} = {_format(segment['hparams'][name])}" for name in mutable
                           if name in segment["hparams"])
        lines.append(f"{span}: {values}" if values else span)
    return lines


def _counts(sweep: dict[str, Any]) -> str:
    return ", ".join(f"{n} {state}" for state, n in (sweep.get("trial_counts") or {}).items() if n)
