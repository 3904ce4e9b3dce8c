"""Population Based Training's members in the database: their lineage, the decision at each boundary report,
taking turns on a fleet smaller than the population, and the snapshots no member may copy any more.

A member is a trial. Its lineage (the segments of its life, each with its hparams and where its weights came
from) is `trials.search_state["pbt"]["segments"]`, and `trials.hparams` is the last segment's. The decision on
a boundary epoch (api.search.pbt) is stored with the epoch's report (`trial_epochs.decision`) before it is
answered, so a repeated report, to any server process after any restart, gets the same answer. The sweep's
`search_state["pbt"]["deleted"]` lists the epochs whose snapshots the server has deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, select

from sweeper import SweeperError, log_files, log_location
from sweeper.messages import Action, Directive, Exploit, PbtMember, PbtSegment, SweepStatus, TrialState, snapshot_path

from api import lifecycle
from api.claims import statements as sql
from api.search import pbt
from api.storage.base import Store, SweepPlan, delete_quietly

logger = logging.getLogger("api.storage")


def first_lineage(hparams: dict[str, Any]) -> dict[str, Any]:
    """A new member's search_state: one segment, from epoch 0, with its first hparams."""
    return {"pbt": {"segments": [PbtSegment(segment=1, start_epoch=0, hparams=hparams).model_dump(mode="json")]}}


def lineage(search_state: Mapping[str, Any] | None) -> list[PbtSegment]:
    """A member's segments, oldest first, from its search_state; empty for a trial that is no member."""
    stored = (search_state or {}).get("pbt") or {}
    return [PbtSegment.model_validate(segment) for segment in stored.get("segments", [])]


def in_force(segments: list[PbtSegment], epoch: int) -> PbtSegment:
    """The segment a member trained `epoch` with."""
    return [segment for segment in segments if segment.start_epoch <= epoch][-1]


def is_pbt(plan: SweepPlan) -> bool:
    return plan.spec.search.strategy == "pbt"


def member(plan: SweepPlan, logdir: str, trial_id: int, number: int, sweep_id: int,
           search_state: Mapping[str, Any] | None) -> PbtMember | None:
    """What a worker needs to run the trial as a member (Assignment.pbt); None for a trial of another strategy."""
    if not is_pbt(plan):
        return None
    assert plan.spec.search.interval_epochs is not None
    return PbtMember(interval_epochs=plan.spec.search.interval_epochs,
                     snapshot_dir=log_location.snapshot_dir(logdir, sweep_id, plan.run_name(trial_id, number)),
                     segments=lineage(search_state))


def _members(metric: str) -> Any:
    """Every member of a sweep, with its objective value at an epoch (if reported) and its epochs done."""
    at_epoch = sql.EPOCHS.alias("at_epoch")
    return (select(sql.TRIALS.c.id, sql.TRIALS.c.index, sql.TRIALS.c.state, sql.TRIALS.c.search_state,
                   at_epoch.c.id.label("reported"),
                   at_epoch.c.metrics[metric].as_float().label("value"),
                   sql.EPOCHS_DONE.label("epochs_done"))
            .select_from(sql.TRIALS.outerjoin(at_epoch, and_(at_epoch.c.trial_id == sql.TRIALS.c.id,
                                                             at_epoch.c.epoch == bindparam("epoch"))))
            .where(sql.TRIALS.c.sweep_id == bindparam("sweep")).order_by(sql.TRIALS.c.index))


class PopulationStore(Store):
    """The storage side of Population Based Training (see the module's docstring)."""

    def _judge_member(self, connection: Connection, held: Row[Any], plan: SweepPlan, epoch: int,
                      stored: Row[Any] | None) -> Directive:
        """The answer to a member's report of `epoch`: at a boundary, the decision stored before, or a new one,
        stored now (exploit, or else stop when a member behind waits for a worker, or else continue)."""
        search, epochs = plan.spec.search, plan.spec.train.epochs
        assert search.interval_epochs is not None
        if not pbt.is_boundary(epoch, search.interval_epochs, epochs):
            if epoch > 0 and pbt.is_boundary(epoch - 1, search.interval_epochs, epochs):
                # Past a boundary: a snapshot this member was told to copy there has been loaded.
                self._tidy_snapshots(connection, held.sweep_id, plan)
            return Directive()
        if stored is not None and stored.decision is not None:
            return _directive(stored.decision)  # answered before: the same answer
        members = list(connection.execute(_members(plan.spec.objective.metric),
                                          {"sweep": held.sweep_id, "epoch": epoch}))
        decision = self._exploit(connection, held, plan, epoch, members)
        if decision is None:
            waiting = self._waiting_behind(held, members, epoch)
            compared = sum(row.reported is not None for row in members)
            decision = {"action": Action.continue_.value,
                        "reason": f"compared with {compared} member(s) at epoch {epoch + 1}"}
            if waiting is not None:
                decision = {"action": Action.stop.value,
                            "reason": f"member {waiting[0]} waits for a worker with {waiting[1]} epoch(s) done: "
                                      "this member hands its worker over and resumes later"}
        connection.execute(sql.STORE_DECISION, {"trial": held.id, "epoch_index": epoch, "decision": decision})
        self._tidy_snapshots(connection, held.sweep_id, plan)
        return _directive(decision)

    def _exploit(self, connection: Connection, held: Row[Any], plan: SweepPlan, epoch: int,
                 members: list[Row[Any]]) -> dict[str, Any] | None:
        """The exploit decision on the member after `epoch` (its new segment stored with it), or None when it is
        not in the bottom quarter of the members that have reported the epoch."""
        search = plan.spec.search
        assert search.mutable is not None
        number = held.index + 1
        segments = {row.index + 1: lineage(row.search_state) for row in members}
        values = {row.index + 1: row.value for row in members if row.reported is not None and segments[row.index + 1]}
        hparams = {other: in_force(segments[other], epoch).hparams for other in values}
        chosen = pbt.decide(number, epoch, values, plan.spec.objective.goal, hparams, plan.spec.search_space(),
                            search.mutable, search.seed)
        if chosen is None:
            return None
        donor = next(row for row in members if row.index + 1 == chosen.donor)
        segment = PbtSegment(segment=len(segments[number]) + 1, start_epoch=epoch + 1, hparams=chosen.hparams,
                             parent_trial_id=donor.id, parent_number=chosen.donor, parent_epoch=epoch)
        folder = log_location.snapshot_dir(self._policy.logdir or "", held.sweep_id,
                                           plan.run_name(donor.id, chosen.donor))
        exploit = Exploit(snapshot=snapshot_path(folder, epoch), segment=segment)
        changed = [f"{name} {hparams[number].get(name)!r} -> {value!r}" for name, value in chosen.hparams.items()
                   if hparams[number].get(name) != value]
        logger.info("sweep %d trial %d (id %d) copies trial %d after epoch %d: %s", held.sweep_id, number, held.id,
                    chosen.donor, epoch + 1, "; ".join(changed) or "the same hparams")
        state = dict(held.search_state or {})
        state["pbt"] = {**state.get("pbt", {}),
                        "segments": [*(old.model_dump(mode="json") for old in segments[number]),
                                     segment.model_dump(mode="json")]}
        self._update_trial(connection, held.id, hparams=chosen.hparams, search_state=state)
        return {"action": Action.exploit.value, "exploit": exploit.model_dump(mode="json"),
                "reason": f"in the bottom quarter of {chosen.compared} members at epoch {epoch + 1}: copies member "
                          f"{chosen.donor}"}

    @staticmethod
    def _waiting_behind(held: Row[Any], members: list[Row[Any]], epoch: int) -> tuple[int, int] | None:
        """A member waiting for a worker with fewer epochs done than this one (number, epochs done), if any: one
        not started yet, or a pending one behind. None in a paused sweep, whose waiting members no one may claim:
        its running members go on, as a paused sweep's running trials do."""
        if held.sweep_status != SweepStatus.running:
            return None
        if held.sweep_next_index < held.sweep_total_trials:
            return held.sweep_next_index + 1, 0
        behind = [(row.epochs_done, row.index + 1) for row in members
                  if row.state == TrialState.pending and row.epochs_done <= epoch]
        if not behind:
            return None
        done, number = min(behind)
        return number, done

    def _tidy_snapshots(self, connection: Connection, sweep_id: int, plan: SweepPlan) -> None:
        """Delete (after the commit) the snapshots of every epoch that no member may copy any more: every
        member has been judged at that epoch or has ended, and none was told to copy one it has not loaded yet
        (it reported no later epoch). All of them go when the sweep ends (Store._forget_snapshots)."""
        if self._policy.logdir is None:
            return
        search = plan.spec.search
        assert search.interval_epochs is not None
        sweep = connection.execute(sql.SWEEP_SEARCH_STATE, {"sweep": sweep_id}).one()
        if sweep.next_index < sweep.total_trials or sweep.status not in lifecycle.OPEN:
            return  # a member not started yet may copy any of them; an ended sweep's all go at once
        state = sweep.search_state or {}
        deleted = set((state.get("pbt") or {}).get("deleted", []))
        candidates = [epoch for epoch in pbt.boundaries(search.interval_epochs, plan.spec.train.epochs)
                      if epoch not in deleted]
        if not candidates:
            return
        members = connection.execute(sql.MEMBERS_STATE, {"sweep": sweep_id}).all()
        judged: dict[int, dict[int, str]] = {}
        for row in connection.execute(sql.MEMBER_DECISIONS, {"sweep": sweep_id}):
            judged.setdefault(row.trial_id, {})[row.epoch] = (row.decision or {}).get("action")

        def done_with(row: Row[Any], epoch: int) -> bool:
            """Whether the member will never copy a snapshot of `epoch`: it ended, or it was judged there and
            either was not told to copy or has since reported a later epoch (so it loaded the copy)."""
            action = judged.get(row.id, {}).get(epoch)
            return row.state.finished or (action is not None
                                          and (action != Action.exploit or row.epochs_done > epoch + 1))

        obsolete = [epoch for epoch in candidates if all(done_with(row, epoch) for row in members)]
        if not obsolete:
            return
        self._update_sweep(connection, sweep_id, search_state={**state, "pbt": {
            **(state.get("pbt") or {}), "deleted": sorted(deleted | set(obsolete))}})
        folders = [log_location.snapshot_dir(self._policy.logdir, sweep_id, plan.run_name(row.id, row.index + 1))
                   for row in members]
        files = [snapshot_path(folder, epoch) for epoch in obsolete for folder in folders]

        def delete() -> None:
            for file in files:
                delete_quietly(log_files.remove, file, f"no member of sweep {sweep_id} may copy it")
            logger.info("sweep %d: deleted the PBT snapshots of epoch(s) %s, which no member may copy any more",
                        sweep_id, ", ".join(str(epoch + 1) for epoch in obsolete))

        self._after_commit(delete)

    def _member_ended(self, connection: Connection, sweep_id: int) -> None:
        """A member ended (completed, failed, cancelled): snapshots only it still held back may go now."""
        try:
            plan = self._plan(connection, sweep_id)
        except SweeperError:  # its spec no longer parses (a model plugin gone): nothing to judge, none to tidy
            return
        if is_pbt(plan):
            self._tidy_snapshots(connection, sweep_id, plan)

    def _sweep_finished(self, connection: Connection, sweep_id: int) -> None:
        """The sweep just ended (a Core statement ended it): its snapshots go, once the transaction commits."""
        self._forget_snapshots(sweep_id, connection.execute(sql.SWEEP_SPEC, {"sweep": sweep_id}).one().spec)


def _directive(decision: Mapping[str, Any]) -> Directive:
    action = Action(decision.get("action", Action.continue_.value))
    if action == Action.exploit:
        return Directive(action=action, exploit=Exploit.model_validate(decision["exploit"]))
    return Directive(action=action)
