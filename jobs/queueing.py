"""Enqueueing run executions on RQ, with the callbacks that finish them on failure."""

import time

from rq import Callback
from rq.job import JobStatus
from rq_scheduler import Scheduler

from . import handlers

# A failed job's data stays in RQ's failed registry this long (seconds); the
# SQL row is the permanent record.
FAILURE_TTL = 7 * 24 * 3600


def job_id(run_id, attempt):
    return f"run-{run_id}-{attempt}"


def enqueue_run(queue, run_id, attempt, timeout):
    """Enqueue one execution of a run with ``job_timeout`` set to its timeout."""
    return queue.enqueue(
        "jobs.playbook.run_playbook",
        run_id,
        attempt,
        job_id=job_id(run_id, attempt),
        job_timeout=timeout,
        failure_ttl=FAILURE_TTL,
        description=f"run {run_id} (attempt {attempt})",
        on_failure=Callback(handlers.on_failure),
        on_stopped=Callback(handlers.on_stopped),
    )


def schedule_run(queue, run_id, attempt, timeout, job_id, delay, meta=None):
    """Put a job for the run in rq-scheduler's schedule, due in ``delay`` seconds.

    The scheduler process moves it to the queue when it is due. Until then
    RQ reports it as scheduled, which the sweep counts as a live job.
    """
    job = queue.create_job(
        "jobs.playbook.run_playbook",
        args=(run_id, attempt),
        job_id=job_id,
        timeout=timeout,
        failure_ttl=FAILURE_TTL,
        # A try that only finds the run still waiting leaves nothing to keep.
        result_ttl=60,
        description=f"run {run_id} (attempt {attempt}, waiting)",
        meta=meta,
        status=JobStatus.SCHEDULED,
        on_failure=Callback(handlers.on_failure),
        on_stopped=Callback(handlers.on_stopped),
    )
    job.save()
    queue.connection.zadd(Scheduler.scheduled_jobs_key, {job.id: time.time() + delay})
    return job


def unschedule(connection, job_id):
    """Remove a job from rq-scheduler's schedule; safe when it is not there."""
    connection.zrem(Scheduler.scheduled_jobs_key, job_id)


def run_of(job):
    """Return (run_id, attempt) for a playbook job, or None for other jobs."""
    if job is None or job.func_name != "jobs.playbook.run_playbook":
        return None
    run_id, attempt = job.args[:2]
    return int(run_id), int(attempt)
