"""Enqueueing run executions on RQ, with the callbacks that finish them on failure."""

from rq import Callback

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


def run_of(job):
    """Return (run_id, attempt) for a playbook job, or None for other jobs."""
    if job is None or job.func_name != "jobs.playbook.run_playbook":
        return None
    run_id, attempt = job.args[:2]
    return int(run_id), int(attempt)
