"""Sweeps: move abandoned runs to a terminal state and clear leftover processes.

``sweep`` runs every SWEEP_INTERVAL seconds in the scheduler process (and
needs no worker). ``reap_host`` is its host-local part, which every worker
also runs on its own host. Both are idempotent and safe to run from several
processes at once, because every ending goes through jobs.state.
"""

import json
import logging
import time
from datetime import timedelta

from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Deployment, RunStatus, database_time

from . import handlers, process, queueing, state

logger = logging.getLogger(__name__)

LAST_SWEEP_KEY = "shepherd:sweep:last"
RQ_ENDED = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED}


def sweep(connection, queue):
    """Run every sweep rule once and return {rule: runs ended or repaired}.

    Records its time in Redis (``shepherd:sweep:last``) for the dashboard
    and health checks.
    """
    config = current_app.config
    started = time.monotonic()
    counts = {
        "stale_heartbeat": end_stale_heartbeats(connection, config),
        "dead_horse": reap_host(config["HOSTNAME"])["dead_horse"],
        "rq_ended": reconcile_running(connection, config),
        "lost_queued": repair_queued(connection, queue, config),
    }
    counts["orphans_killed"] = reap_host(config["HOSTNAME"], finalize=False)[
        "orphans_killed"
    ]
    counts["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    connection.set(
        LAST_SWEEP_KEY,
        json.dumps({"at": time.time(), "host": config["HOSTNAME"], "counts": counts}),
    )
    if any(v for k, v in counts.items() if k != "duration_ms"):
        logger.warning("sweep: %s", counts)
    return counts


RUN_COLUMNS = (
    Deployment.id,
    Deployment.attempt,
    Deployment.job_id,
    Deployment.heartbeat_at,
    Deployment.worker_name,
    Deployment.hostname,
    Deployment.horse_pid,
    Deployment.horse_started,
)


def _running_runs(*conditions):
    # Plain rows, not ORM objects: ending a run commits, and every commit
    # expires every object in the session, so loading n runs as objects made
    # a sweep that ends them cost n * n expirations.
    return db.session.execute(
        select(*RUN_COLUMNS).where(
            Deployment.status == RunStatus.RUNNING.value, *conditions
        )
    ).all()


def _rq_status(connection, job_id):
    if not job_id:
        return None
    try:
        return Job.fetch(job_id, connection=connection).get_status(refresh=False)
    except NoSuchJobError:
        return None


def end_stale_heartbeats(connection, config):
    """Abandon running runs whose heartbeat is older than HEARTBEAT_GRACE."""
    now = database_time()
    grace = config["HEARTBEAT_GRACE"]
    cutoff = now - timedelta(seconds=grace)
    ended = 0
    for run in _running_runs(Deployment.heartbeat_at < cutoff):
        age = (now - run.heartbeat_at).total_seconds()
        rq_status = _rq_status(connection, run.job_id)
        reason = (
            f"no heartbeat from worker {run.worker_name} on host {run.hostname} for "
            f"{age:.1f} s (grace {grace:g} s, database clock); its worker is gone"
        )
        ended += _end(
            run,
            reason,
            "stale_heartbeat",
            {
                "heartbeat_age": round(age, 3),
                "grace": grace,
                "clock": "database",
                "checked_at": now.isoformat(),
                "rq_status": rq_status,
            },
        )
    return ended


def reconcile_running(connection, config):
    """Abandon running runs whose RQ job has ended while no heartbeat arrives.

    RQ may mark a job failed while its horse still runs (its worker parent
    died), so a fresh heartbeat always wins over RQ's registry.
    """
    now = database_time()
    quiet_for = 2 * config["HEARTBEAT_INTERVAL"]
    cutoff = now - timedelta(seconds=quiet_for)
    ended = 0
    for run in _running_runs(Deployment.heartbeat_at < cutoff):
        rq_status = _rq_status(connection, run.job_id)
        if rq_status not in RQ_ENDED:
            continue
        age = (now - run.heartbeat_at).total_seconds()
        reason = (
            f"RQ reports job {run.job_id} as {rq_status.value} while the run was still "
            f"running, and worker {run.worker_name} on host {run.hostname} sent no "
            f"heartbeat for {age:.1f} s"
        )
        ended += _end(
            run,
            reason,
            "rq_job_ended",
            {
                "heartbeat_age": round(age, 3),
                "clock": "database",
                "rq_status": rq_status.value,
            },
        )
    return ended


def _end(run, reason, code, evidence):
    return handlers.end_here(
        run.id,
        None,
        RunStatus.ABANDONED,
        reason,
        reason_code=code,
        decided_by="sweep",
        evidence={"rq_job": run.job_id, **evidence},
    )


def repair_queued(connection, queue, config):
    """Re-enqueue, once, queued runs whose RQ job is gone; fail them the second time.

    A queued run never started, so enqueueing it again is safe. Rows younger
    than REQUEUE_AFTER are left alone: their job may still be on its way.
    """
    now = database_time()
    cutoff = now - timedelta(seconds=config["REQUEUE_AFTER"])
    runs = db.session.scalars(
        select(Deployment).where(
            Deployment.status == RunStatus.QUEUED.value, Deployment.queued_at < cutoff
        )
    ).all()
    repaired = 0
    for run in runs:
        rq_status = _rq_status(connection, run.job_id)
        if rq_status in (
            JobStatus.QUEUED,
            JobStatus.STARTED,
            JobStatus.DEFERRED,
            JobStatus.SCHEDULED,
        ):
            continue
        if rq_status in RQ_ENDED:
            repaired += state.finish(
                run.id,
                RunStatus.FAILED,
                f"RQ job {run.job_id} ended as {rq_status.value} before the run started",
                decided_by="sweep",
                reason_code="rq_job_ended",
                evidence={"rq_status": rq_status.value, "rq_job": run.job_id},
                explain=True,
                from_statuses=[RunStatus.QUEUED.value],
            )
            continue
        repaired += _requeue_or_fail(queue, run)
    return repaired


def _requeue_or_fail(queue, run):
    if run.requeue_count == 0:
        new_attempt = run.attempt + 1
        new_job_id = queueing.job_id(run.id, new_attempt)
        if not state.requeue(run.id, run.attempt, new_job_id):
            return 0
        queueing.enqueue_run(queue, run.id, new_attempt, run.timeout)
        return 1
    return int(
        state.finish(
            run.id,
            RunStatus.FAILED,
            f"the RQ job {run.job_id} was lost from Redis twice before the run started; "
            "check that Redis keeps its data (appendonly) and launch the run again",
            decided_by="sweep",
            reason_code="job_lost",
            evidence={"rq_job": run.job_id, "requeue_count": run.requeue_count},
            explain=True,
            from_statuses=[RunStatus.QUEUED.value],
        )
    )


def reap_host(hostname, finalize=True):
    """End this host's runs whose work horse is gone and kill leftover processes.

    With ``finalize``, a running run of this host whose horse process is no
    longer alive is abandoned at once (the horse died unseen, for example with
    its worker). Without it, processes marked for a run that is no longer live
    here are killed. Returns the counts of each.
    """
    counts = {"dead_horse": 0, "orphans_killed": 0}
    if finalize:
        for run in _running_runs(Deployment.hostname == hostname):
            if run.horse_pid is None or process.is_same_process(
                run.horse_pid, run.horse_started
            ):
                continue
            reason = (
                f"the work horse (pid {run.horse_pid}) of worker {run.worker_name} on host "
                f"{hostname} is gone and the run was still marked running"
            )
            counts["dead_horse"] += handlers.end_here(
                run.id,
                run.attempt,
                RunStatus.ABANDONED,
                reason,
                reason_code="horse_gone",
                decided_by="sweep",
                evidence={"horse_pid": run.horse_pid, "rq_job": run.job_id},
            )
        return counts

    marked = {}
    for proc, run_id, attempt in process.marked_processes(hostname):
        marked.setdefault((run_id, attempt), []).append(proc)
    if not marked:
        return counts
    live = {
        (run.id, run.attempt)
        for run in db.session.scalars(
            select(Deployment).where(
                Deployment.id.in_({run_id for run_id, _ in marked}),
                Deployment.status == RunStatus.RUNNING.value,
            )
        )
        if process.is_same_process(run.horse_pid, run.horse_started)
    }
    for (run_id, attempt), procs in marked.items():
        if (run_id, attempt) in live:
            continue
        logger.warning(
            "run %s: attempt %s is not live on host %s; killing %d leftover process(es)",
            run_id,
            attempt,
            hostname,
            len(procs),
        )
        counts["orphans_killed"] += process.kill_run(hostname, run_id, attempt=attempt)
    return counts
