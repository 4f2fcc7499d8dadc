"""The run state machine: every change of a run's status goes through here.

    queued  --worker starts it-------------------------> running
    queued  --operator cancels-------------------------> canceled
    queued  --sweep: job lost twice / job failed in RQ-> failed
    running --playbook ends (worker)-------------------> successful | failed
    running --job_timeout fires (worker)---------------> timeout
    running --operator cancels (web)-------------------> canceled
    running --horse killed, cold shutdown (worker)-----> abandoned
    running --stale heartbeat, dead horse (sweep)------> abandoned
    failed | timeout | abandoned --retry policy allows--> queued (next attempt)

Each write is a compare-and-set on the status and, for a worker, on the
attempt number that fences its execution: the first terminal status wins and
a late write from an execution already declared dead changes nothing.
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update

from webapp.extensions import db
from webapp.models import (
    ACTIVE_STATUSES,
    Deployment,
    OutputChunk,
    RunStatus,
    database_time,
    db_now,
)

from . import leases, notify, retries

logger = logging.getLogger(__name__)

ACTIVE = [s.value for s in ACTIVE_STATUSES]
# Runs per claim in finish_many. Each claim reads its runs back through an
# IN list of their ids, and SQLite accepts at most 32,766 bound values in
# one statement (since SQLite 3.32).
CLAIM_BATCH = 1000
# Columns that finish_many reads back of the runs it ended, enough to record
# their attempts and decide their retries (jobs.retries).
ENDED_COLUMNS = (
    "id",
    "playbook",
    "check_mode",
    "status",
    "reason",
    "reason_code",
    "verdict",
    "attempt",
    "retries",
    "worker_name",
    "hostname",
    "started_at",
    "finished_at",
    "rc",
    "stats",
    "progress",
)


def mark_running(
    run_id, attempt, *, worker_name, hostname, horse_pid, horse_started, artifact_dir
):
    """Move a queued run to running for execution ``attempt``.

    Returns False, changing nothing, when the run was canceled or another
    execution owns it. Safe to call twice: the second call returns False.
    """
    result = db.session.execute(
        update(Deployment)
        .where(
            Deployment.id == run_id,
            Deployment.attempt == attempt,
            Deployment.status == RunStatus.QUEUED.value,
        )
        .values(
            status=RunStatus.RUNNING.value,
            started_at=db_now(),
            heartbeat_at=db_now(),
            worker_name=worker_name,
            hostname=hostname,
            horse_pid=horse_pid,
            horse_started=horse_started,
            artifact_dir=artifact_dir,
        )
    )
    db.session.commit()
    if result.rowcount != 1:
        logger.info(
            "run %s: attempt %s not started, the run is no longer queued",
            run_id,
            attempt,
        )
        return False
    logger.info(
        "run %s: queued -> running on %s (worker %s)", run_id, hostname, worker_name
    )
    return True


def record_process(run_id, attempt, *, pid, pgid, pid_started):
    """Store the ansible-playbook process of a running execution."""
    db.session.execute(
        update(Deployment)
        .where(Deployment.id == run_id, Deployment.attempt == attempt)
        .values(pid=pid, pgid=pgid, pid_started=pid_started)
    )
    db.session.commit()


def heartbeat(run_id, attempt, progress=None):
    """Write the heartbeat of a running execution on the database clock.

    Returns False when the execution no longer owns a running run, so the
    caller stops its playbook.
    """
    values = {"heartbeat_at": db_now()}
    if progress is not None:
        values["progress"] = progress
    result = db.session.execute(
        update(Deployment)
        .where(
            Deployment.id == run_id,
            Deployment.attempt == attempt,
            Deployment.status == RunStatus.RUNNING.value,
        )
        .values(**values)
    )
    db.session.commit()
    return result.rowcount == 1


def finish(
    run_id,
    status,
    reason=None,
    *,
    decided_by,
    attempt=None,
    reason_code=None,
    evidence=None,
    rc=None,
    stats=None,
    progress=None,
    explain=False,
    from_statuses=ACTIVE,
    last_heartbeat=None,
):
    """Move an active run to the terminal ``status``; return True if this call did.

    ``attempt`` fences a worker's write to its own execution; sweeps and
    operators pass None. ``last_heartbeat`` fences a sweep's verdict: the
    row changes only if no heartbeat newer than it was written. With
    ``explain``, the reason is appended to the output once, by whichever
    caller wins, and the run's host leases are deleted in the same
    transaction. Safe to call twice and from racing processes: only the
    first call changes the row.

    The winning call also records the ended attempt (jobs.retries). When the
    playbook's retry policy allows, it queues the run again for its next
    attempt in the same transaction. The run is then ``queued``, not
    terminal, and the next attempt's ending calls this again.
    """
    status = RunStatus(status)
    if not status.is_terminal:
        raise ValueError(f"{status.value!r} is not a terminal status")
    if status is not RunStatus.SUCCESSFUL and not reason:
        raise ValueError(f"a {status.value} run needs a reason")

    now = database_time()
    verdict = {
        "code": reason_code or status.value,
        "decided_by": decided_by,
        "decided_at": now.isoformat(),
        "clock": "database",
        "evidence": evidence or {},
    }
    conditions = [Deployment.id == run_id, Deployment.status.in_(from_statuses)]
    if attempt is not None:
        conditions.append(Deployment.attempt == attempt)
    if last_heartbeat is not None:
        # "<=" rather than "==": SQLite compares the stored text, whose
        # fraction has 3 digits while a bound value has 6.
        conditions.append(Deployment.heartbeat_at <= last_heartbeat)
    values = {
        "status": status.value,
        "reason": reason,
        "reason_code": reason_code or status.value,
        "verdict": verdict,
        "finished_at": now,
    }
    if rc is not None:
        values["rc"] = rc
    if stats is not None:
        values["stats"] = stats
    if progress is not None:
        values["progress"] = progress
        if progress.get("host_last_task"):
            verdict["last_tasks"] = progress["host_last_task"]

    result = db.session.execute(update(Deployment).where(*conditions).values(**values))
    won = result.rowcount == 1
    retry = None
    if won:
        leases.release(run_id)
        run = db.session.get(Deployment, run_id, populate_existing=True)
        if explain:
            db.session.add(
                OutputChunk(
                    deployment_id=run_id,
                    attempt=run.attempt,
                    text=_explanation(status, reason),
                )
            )
        # In this same transaction: record the attempt, maybe queue a retry.
        retry = retries.after_ending(run)
    db.session.commit()

    if not won:
        logger.info(
            "run %s: %s by %s ignored, the run already ended",
            run_id,
            status.value,
            decided_by,
        )
        return False
    log = logger.info if decided_by == "worker" else logger.warning
    log("run %s: -> %s by %s: %s", run_id, status.value, decided_by, reason or "ok")
    if retry:
        logger.warning("run %s: %s", run_id, retry)
    else:
        # Only the winner gets here, so each final ending notifies exactly once.
        notify.run_ended(run_id, status)
    return True


def explain(run_id, status, reason):
    """Append the reason a run ended to its output."""
    db.session.add(OutputChunk(deployment_id=run_id, text=_explanation(status, reason)))
    db.session.commit()


def _explanation(status, reason):
    return f"\n[shepherd] {RunStatus(status).value}: {reason}\n"


@dataclass
class Ending:
    """A sweep's verdict on one running run, judged on its heartbeat at ``last_heartbeat``."""

    run_id: int
    reason: str
    reason_code: str
    evidence: dict
    last_heartbeat: datetime


def finish_many(endings, status, *, decided_by):
    """End many running runs in one transaction; return the ids this call ended.

    Each ending is the compare-and-set of finish with ``last_heartbeat`` and
    ``explain``: a run changes only if it is still running and no newer
    heartbeat arrived. The winners' leases are released, their attempts
    recorded (and retries queued) and their reasons appended to the output
    before one commit, and their notifications are enqueued together.
    """
    status = RunStatus(status)
    if not endings:
        return []
    now = database_time()
    ended = []
    for start in range(0, len(endings), CLAIM_BATCH):
        ended += _claim(endings[start : start + CLAIM_BATCH], status, decided_by, now)

    retried = {}
    if ended:
        leases.release(*(run.id for run in ended))
        db.session.execute(
            insert(OutputChunk),
            [
                {
                    "deployment_id": run.id,
                    "attempt": run.attempt,
                    "text": _explanation(status, run.reason),
                }
                for run in ended
            ],
        )
        retried = retries.after_endings(ended)
    db.session.commit()

    for run in ended:
        logger.warning(
            "run %s: -> %s by %s: %s", run.id, status.value, decided_by, run.reason
        )
        if run.id in retried:
            logger.warning("run %s: %s", run.id, retried[run.id])
    lost = len(endings) - len(ended)
    if lost:
        logger.info(
            "%d %s verdict(s) by %s ignored: a heartbeat arrived or the run ended",
            lost,
            status.value,
            decided_by,
        )
    notify.runs_ended([(run.id, status) for run in ended if run.id not in retried])
    return [run.id for run in ended]


def _claim(endings, status, decided_by, now):
    """Apply the compare-and-set of each ending; return the rows won.

    One UPDATE per run, sent as a single executemany, writes the verdicts
    with a fresh batch id. The rows that carry that id afterwards, read in
    the same transaction, are the ones this call ended: the others lost to a
    newer heartbeat or to another ending.
    """
    table = Deployment.__table__
    ids = [ending.run_id for ending in endings]
    progress = dict(
        db.session.execute(
            select(table.c.id, table.c.progress).where(table.c.id.in_(ids))
        ).all()
    )
    batch = uuid.uuid4().hex
    statement = (
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            table.c.status == RunStatus.RUNNING.value,
            table.c.heartbeat_at <= bindparam("b_heartbeat"),
        )
        .values(
            status=status.value,
            finished_at=now,
            reason=bindparam("b_reason"),
            reason_code=bindparam("b_code"),
            verdict=bindparam("b_verdict", type_=table.c.verdict.type),
        )
    )
    db.session.connection().execute(
        statement,
        [
            {
                "b_id": ending.run_id,
                "b_heartbeat": ending.last_heartbeat,
                "b_reason": ending.reason,
                "b_code": ending.reason_code,
                "b_verdict": _sweep_verdict(ending, decided_by, now, progress, batch),
            }
            for ending in endings
        ],
    )
    return db.session.execute(
        select(*(table.c[name] for name in ENDED_COLUMNS)).where(
            table.c.id.in_(ids),
            Deployment.verdict["batch"].as_string() == batch,
        )
    ).all()


def _sweep_verdict(ending, decided_by, now, progress, batch):
    verdict = {
        "code": ending.reason_code,
        "batch": batch,
        "decided_by": decided_by,
        "decided_at": now.isoformat(),
        "clock": "database",
        "evidence": ending.evidence,
    }
    last_tasks = (progress.get(ending.run_id) or {}).get("host_last_task")
    if last_tasks:
        verdict["last_tasks"] = last_tasks
    return verdict


def requeue(run_id, attempt, job_id):
    """Give a queued run whose RQ job was lost a new attempt; True if this call did.

    Only the first requeue succeeds, so two sweeps never enqueue twice.
    """
    result = db.session.execute(
        update(Deployment)
        .where(
            Deployment.id == run_id,
            Deployment.attempt == attempt,
            Deployment.status == RunStatus.QUEUED.value,
            Deployment.requeue_count == 0,
        )
        .values(attempt=attempt + 1, requeue_count=1, job_id=job_id)
    )
    won = result.rowcount == 1
    if won:
        db.session.add(
            OutputChunk(
                deployment_id=run_id,
                attempt=attempt + 1,
                text="[shepherd] the queued job was lost from Redis; enqueued it again\n",
            )
        )
    db.session.commit()
    if won:
        logger.warning(
            "run %s: RQ job lost while queued; re-enqueued as %s", run_id, job_id
        )
    return won


def append_output(
    run_id, text, new_offset, old_offset, *, at_output=True, attempt=None
):
    """Append ``text`` read from the artifact stdout file between two byte offsets.

    The offset is compared and set in the same transaction, so two readers of
    one file never store the same bytes twice. ``attempt`` fences the write
    to that attempt's file, because a retried run starts a new file at
    offset 0; None stores the bytes for the run's current attempt. Returns
    True if stored.
    """
    values = {"output_offset": new_offset}
    if at_output:
        values["last_output_at"] = db_now()
    conditions = [Deployment.id == run_id, Deployment.output_offset == old_offset]
    if attempt is not None:
        conditions.append(Deployment.attempt == attempt)
    result = db.session.execute(update(Deployment).where(*conditions).values(**values))
    if result.rowcount != 1:
        db.session.rollback()
        return False
    if attempt is None:
        attempt = db.session.scalar(
            select(Deployment.attempt).where(Deployment.id == run_id)
        )
    db.session.add(OutputChunk(deployment_id=run_id, attempt=attempt, text=text))
    db.session.commit()
    return True
