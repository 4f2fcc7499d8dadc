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
from rq.registry import StartedJobRegistry
from sqlalchemy import func, or_, select

from webapp.extensions import db
from webapp.models import Deployment, RunStatus, database_time

from . import handlers, leases, liveness, notify, process, queueing, retries, state

logger = logging.getLogger(__name__)

LAST_SWEEP_KEY = "shepherd:sweep:last"
# Seconds a sweep may wait for SQLite's write lock before it treats the
# database as congested and postpones heartbeat verdicts. A write
# transaction normally keeps the lock for milliseconds.
CONGESTED_WAIT = 0.25
# Seconds a sweep waits on SQLite before it writes heartbeat verdicts. A
# heartbeat blocked behind another writer sleeps in SQLite's busy handler
# between tries, at most 100 ms apart (sqliteDefaultBusyCallback, SQLite
# built with usleep). The sweep may itself have waited for the lock and got
# it first, so after this pause any heartbeat that was waiting has landed,
# and the verdict's compare-and-set sees it.
BUSY_RETRY_SETTLE = 0.2
# Seconds after a run ended before its RQ job may be moved out of the
# started registry by a sweep.
REGISTRY_SETTLE = 10
RQ_ENDED = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED}


def sweep(connection, queue, watch=None):
    """Run every sweep rule once and return {rule: runs ended or repaired}.

    Records its time in Redis (``shepherd:sweep:last``) for the dashboard
    and health checks. ``watch`` is the caller's HeartbeatWatch, kept from
    one sweep to the next (see jobs.liveness).
    """
    config = current_app.config
    started = time.monotonic()
    counts = {
        "stale_heartbeat": end_stale_heartbeats(connection, config, watch),
        "dead_horse": reap_host(config["HOSTNAME"])["dead_horse"],
        "rq_ended": reconcile_running(connection, config, watch),
        "retry_due": retries.enqueue_due(connection, queue),
        "lost_queued": repair_queued(connection, queue, config),
        "rq_registry": reconcile_registries(connection, queue),
        "stale_leases": leases.release_stale(config["HEARTBEAT_GRACE"]),
    }
    counts["orphans_killed"] = reap_host(config["HOSTNAME"], finalize=False)[
        "orphans_killed"
    ]
    counts["stuck_notified"] = notify.notify_stuck_runs(config)
    counts["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    if watch is not None:
        watch.end()
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
    Deployment.pid,
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


def _rq_statuses(connection, runs):
    """Return the RQ status of each run's job (None when it has none), in one round trip."""
    job_ids = [run.job_id for run in runs if run.job_id]
    jobs = dict(
        zip(job_ids, Job.fetch_many(job_ids, connection=connection), strict=True)
    )
    return [
        jobs[run.job_id].get_status(refresh=False) if jobs.get(run.job_id) else None
        for run in runs
    ]


def _heartbeat_ages(watch, quiet_for):
    """Yield (run, Age, checked_at) for running runs quiet for over ``quiet_for`` s.

    Without a watch, ages are read on the database clock alone, which suits a
    one-off sweep. A sweeper that runs repeatedly passes its HeartbeatWatch,
    which reads every running run so that it can bound heartbeat ages on
    its own monotonic clock (see jobs.liveness).
    """
    if watch is not None:
        watch.begin()
    now = database_time()
    cutoff = now - timedelta(seconds=quiet_for)
    if watch is None:
        for run in _running_runs(Deployment.heartbeat_at < cutoff):
            age = (now - run.heartbeat_at).total_seconds()
            yield run, liveness.Age(age, "database", age, 0.0, run.heartbeat_at), now
        return
    for run in _running_runs():
        database_age = (
            (now - run.heartbeat_at).total_seconds() if run.heartbeat_at else None
        )
        age = watch.age(run, database_age)
        if age.seconds > quiet_for:
            yield run, age, now


def end_stale_heartbeats(connection, config, watch=None):
    """Abandon running runs whose heartbeat is older than HEARTBEAT_GRACE."""
    grace = config["HEARTBEAT_GRACE"]
    stale = list(_heartbeat_ages(watch, grace))
    if stale and _writes_congested(config, [run.id for run, _, _ in stale]):
        return 0
    verdicts = []
    statuses = _rq_statuses(connection, [run for run, _, _ in stale])
    for (run, age, now), rq_status in zip(stale, statuses, strict=True):
        reason = (
            f"no heartbeat from worker {run.worker_name} on host {run.hostname} for "
            f"{age.seconds:.1f} s (grace {grace:g} s, {age.clock} clock); "
            "its worker is gone"
        )
        evidence = {
            **age.evidence(),
            "grace": grace,
            "checked_at": now.isoformat(),
            "rq_status": rq_status.value if rq_status else None,
        }
        verdicts.append((run, reason, evidence, age.heartbeat_at))
    return _end(verdicts, "stale_heartbeat")


def _writes_congested(config, run_ids):
    """Return True when SQLite's write lock is so contended that heartbeats wait.

    SQLite has one write lock for the whole file. Under heavy load a
    heartbeat can wait for it for seconds, so a heartbeat that looks stale
    may be one still waiting. This takes the lock once, as a heartbeat
    would, and postpones heartbeat verdicts while that took longer than
    CONGESTED_WAIT seconds. PostgreSQL locks rows, so it is not checked.
    """
    if db.engine.dialect.name != "sqlite":
        return False
    db.session.rollback()
    connection = db.engine.raw_connection()
    try:
        started = time.monotonic()
        connection.execute("BEGIN IMMEDIATE")
        waited = time.monotonic() - started
        connection.execute("ROLLBACK")
    finally:
        connection.close()
    # A heartbeat blocked behind another writer gets the lock right after it
    # is freed, in no set order with this sweep's verdict writes. So any
    # noticeable wait postpones the verdicts, and the next sweep judges
    # after the blocked heartbeats have landed.
    if waited <= min(CONGESTED_WAIT, config["HEARTBEAT_INTERVAL"]):
        return False
    logger.warning(
        "sweep: runs %s look stale, but taking SQLite's write lock took %.1f s "
        "(over %g s); heartbeat verdicts wait for the next sweep",
        run_ids,
        waited,
        min(CONGESTED_WAIT, config["HEARTBEAT_INTERVAL"]),
    )
    return True


def reconcile_running(connection, config, watch=None):
    """Abandon running runs whose RQ job has ended while no heartbeat arrives.

    RQ may mark a job failed while its horse still runs (its worker parent
    died), so a fresh heartbeat always wins over RQ's registry.
    """
    quiet_for = 2 * config["HEARTBEAT_INTERVAL"]
    quiet = list(_heartbeat_ages(watch, quiet_for))
    statuses = _rq_statuses(connection, [run for run, _, _ in quiet])
    verdicts = []
    for (run, age, now), rq_status in zip(quiet, statuses, strict=True):
        if rq_status not in RQ_ENDED:
            continue
        reason = (
            f"RQ reports job {run.job_id} as {rq_status.value} while the run was still "
            f"running, and worker {run.worker_name} on host {run.hostname} sent no "
            f"heartbeat for {age.seconds:.1f} s ({age.clock} clock)"
        )
        evidence = {
            **age.evidence(),
            "quiet_for": quiet_for,
            "checked_at": now.isoformat(),
            "rq_status": rq_status.value,
        }
        verdicts.append((run, reason, evidence, age.heartbeat_at))
    return _end(verdicts, "rq_job_ended")


def reconcile_registries(connection, queue):
    """Fail RQ jobs still listed as started well after their run ended.

    A job's own worker moves it out of the started registry within moments
    of the run ending. A job still there REGISTRY_SETTLE seconds later has
    lost its worker. RQ notices that only a minute or more later, and until
    then ``rq info`` would show the job as running.
    """
    registry = StartedJobRegistry(queue=queue)
    entries = registry.get_job_and_execution_ids(cleanup=False)
    if not entries:
        return 0
    runs = {
        run.job_id: run
        for run in db.session.scalars(
            select(Deployment).where(
                Deployment.job_id.in_({job_id for job_id, _ in entries})
            )
        )
    }
    settled = database_time() - timedelta(seconds=REGISTRY_SETTLE)
    repaired = 0
    for job_id, execution_id in entries:
        run = runs.get(job_id)
        if run is None or run.is_active or run.finished_at > settled:
            continue
        connection.zrem(registry.key, f"{job_id}:{execution_id}")
        try:
            job = Job.fetch(job_id, connection=connection)
        except NoSuchJobError:
            continue
        job.set_status(JobStatus.FAILED)
        queue.failed_job_registry.add(
            job, exc_string=f"run {run.id} ended {run.status}: {run.reason}"
        )
        repaired += 1
        logger.warning(
            "run %s: RQ job %s listed as started after the run ended %s; moved to failed",
            run.id,
            job_id,
            run.status,
        )
    return repaired


def _end(verdicts, code):
    """Abandon the runs in ``verdicts``: (run row, reason, evidence, heartbeat judged).

    Each ending is a compare-and-set on the heartbeat read for the judgement,
    so one that arrived since, while this sweeper was slow or frozen, wins.
    A run on this host goes through handlers.end_here, which kills what is
    left of it and copies its last output. Runs on other hosts end together
    in one transaction.
    """
    if not verdicts:
        return 0
    if db.engine.dialect.name == "sqlite":
        # Drop the read snapshot, so the verdicts see what lands meanwhile.
        db.session.rollback()
        time.sleep(BUSY_RETRY_SETTLE)
    hostname = current_app.config["HOSTNAME"]
    remote = []
    ended = 0
    for run, reason, evidence, heartbeat_at in verdicts:
        evidence = {"rq_job": run.job_id, **evidence}
        if run.hostname == hostname or heartbeat_at is None:
            ended += handlers.end_here(
                run.id,
                None,
                RunStatus.ABANDONED,
                reason,
                reason_code=code,
                decided_by="sweep",
                evidence=evidence,
                last_heartbeat=heartbeat_at,
            )
            continue
        evidence = {
            "worker": run.worker_name,
            "host": run.hostname,
            "pid": run.pid,
            "last_heartbeat": heartbeat_at.isoformat(),
            **evidence,
        }
        remote.append(state.Ending(run.id, reason, code, evidence, heartbeat_at))
    ended += len(state.finish_many(remote, RunStatus.ABANDONED, decided_by="sweep"))
    return ended


def repair_queued(connection, queue, config):
    """Re-enqueue, once, queued runs whose RQ job is gone; fail them the second time.

    A queued run never started, so enqueueing it again is safe. Rows younger
    than REQUEUE_AFTER are left alone: their job may still be on its way. A
    retry counts from the time it was enqueued, and a retry still waiting
    for its time has no job on purpose (see jobs.retries).
    """
    now = database_time()
    cutoff = now - timedelta(seconds=config["REQUEUE_AFTER"])
    runs = db.session.scalars(
        select(Deployment).where(
            Deployment.status == RunStatus.QUEUED.value,
            func.coalesce(Deployment.retry_at, Deployment.queued_at) < cutoff,
            or_(Deployment.retry_at.is_(None), Deployment.job_id.is_not(None)),
        )
    ).all()
    repaired = 0
    statuses = _rq_statuses(connection, runs)
    for run, rq_status in zip(runs, statuses, strict=True):
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
                evidence={
                    "rq_status": rq_status.value,
                    "rq_job": run.job_id,
                    **_queued_age(run, now, config),
                },
                explain=True,
                from_statuses=[RunStatus.QUEUED.value],
            )
            continue
        repaired += _requeue_or_fail(queue, run, _queued_age(run, now, config))
    return repaired


def _queued_age(run, now, config):
    return {
        "queued_for": round((now - run.queued_at).total_seconds(), 3),
        "requeue_after": config["REQUEUE_AFTER"],
        # queued_at comes from the web process's clock when it launched the run.
        "clock": "database, against the web process's queued_at",
    }


def _requeue_or_fail(queue, run, queued_age):
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
            evidence={
                "rq_job": run.job_id,
                "requeue_count": run.requeue_count,
                **queued_age,
            },
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
                evidence={
                    "horse_pid": run.horse_pid,
                    "horse_started": run.horse_started,
                    "pid_now_started": process.start_time(run.horse_pid),
                    "checked_on": hostname,
                    "clock": "process table",
                    "rq_job": run.job_id,
                },
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
