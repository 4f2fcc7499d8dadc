"""Automatic retries: a playbook's retry policy, the decision after each ending,
and the sweep rule that enqueues a retry once it is due.

A pending retry lives only in SQL (the run is queued with ``retry_at`` set
and no RQ job), so a Redis flush loses nothing. The decision is made inside
the transaction in which an ending wins (jobs.state.finish), and enqueueing
claims the run with a compare-and-set first, so two schedulers, or a worker
and a sweep, never retry one attempt twice.

A playbook sets its policy in its header comment lines::

    # retry_attempts: 3
    # retry_backoff: 10, 30
    # retry_on: unreachable, abandoned, timeout
    # idempotent: false
"""

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from flask import current_app
from rq.job import Job
from sqlalchemy import insert, select, update

from webapp.catalog import read_header
from webapp.extensions import db
from webapp.models import (
    Attempt,
    Deployment,
    OutputChunk,
    RunStatus,
    database_time,
    db_now,
)

from . import queueing

logger = logging.getLogger(__name__)

ENDING_KINDS = ("unreachable", "abandoned", "timeout")
DEFAULT_RETRY_ON = frozenset({"unreachable", "abandoned"})
TRUE_WORDS = {"true": True, "yes": True, "1": True}
FALSE_WORDS = {"false": False, "no": False, "0": False}


class PolicyError(ValueError):
    """A retry key in a playbook header has an invalid value."""


@dataclass(frozen=True)
class RetryPolicy:
    """A playbook's retry settings: attempts, backoff and the endings retried."""

    # Attempts in all, the first included: 1 means no retries.
    max_attempts: int = 1
    # Seconds before retry 1, 2 and so on. The last value repeats.
    backoff: tuple = (30.0,)
    retry_on: frozenset = DEFAULT_RETRY_ON
    idempotent: bool = False

    def delay(self, retry_number):
        """Return the seconds to wait before retry ``retry_number`` (from 1)."""
        return self.backoff[min(retry_number, len(self.backoff)) - 1]

    def covers(self, kind):
        return "any" in self.retry_on or kind in self.retry_on


def parse_policy(meta, default):
    """Build the policy from header ``meta``, using ``default`` for missing keys.

    Raises PolicyError naming the key, the value and what is valid.
    """
    max_attempts = default.max_attempts
    if meta.get("retry_attempts"):
        raw = meta["retry_attempts"]
        try:
            max_attempts = int(raw)
        except ValueError:
            max_attempts = 0
        if max_attempts < 1:
            raise PolicyError(
                f"retry_attempts {raw!r} is invalid: give the number of attempts in "
                "all, 1 or more (1 means no retries)"
            )

    backoff = default.backoff
    if meta.get("retry_backoff"):
        raw = meta["retry_backoff"]
        try:
            backoff = tuple(float(part) for part in raw.split(","))
        except ValueError:
            backoff = ()
        if not backoff or any(not 0 <= value < float("inf") for value in backoff):
            raise PolicyError(
                f"retry_backoff {raw!r} is invalid: give seconds to wait before each "
                "retry, separated by commas, for example '10, 30'"
            )

    retry_on = default.retry_on
    if meta.get("retry_on"):
        raw = meta["retry_on"]
        retry_on = frozenset(part.strip() for part in raw.split(",") if part.strip())
        valid = {*ENDING_KINDS, "any"}
        if not retry_on or not retry_on <= valid:
            raise PolicyError(
                f"retry_on {raw!r} is invalid: give 'any' or a list of "
                f"{', '.join(ENDING_KINDS)}"
            )

    idempotent = default.idempotent
    if meta.get("idempotent"):
        raw = meta["idempotent"]
        words = {**TRUE_WORDS, **FALSE_WORDS}
        if raw.lower() not in words:
            raise PolicyError(f"idempotent {raw!r} is invalid: give true or false")
        idempotent = words[raw.lower()]

    return RetryPolicy(max_attempts, backoff, retry_on, idempotent)


def policy_for(playbook):
    """Return the retry policy of ``playbook`` (a path under PLAYBOOK_DIR).

    An unreadable file or an invalid key means no retries, with a warning:
    a policy that cannot be read must not repeat a run.
    """
    config = current_app.config
    default = RetryPolicy(config["RETRY_ATTEMPTS"], (config["RETRY_BACKOFF"],))
    try:
        meta = read_header(Path(config["PLAYBOOK_DIR"]) / playbook)
        return parse_policy(meta, default)
    except (OSError, PolicyError) as exc:
        logger.warning("playbook %s: %s; its runs are not retried", playbook, exc)
        return RetryPolicy(max_attempts=1)


def ending_kind(status, reason_code):
    """Return which retry_on word an ending matches: one of ENDING_KINDS or 'failed'."""
    status = RunStatus(status)
    if status is RunStatus.ABANDONED:
        return "abandoned"
    if status is RunStatus.TIMEOUT:
        return "timeout"
    if reason_code == "unreachable":
        return "unreachable"
    return "failed"


def changed_hosts(run):
    """Return the hosts on which the run's attempt reported a changed task.

    Reads the final stats and, for an attempt that was interrupted before
    Ansible printed them, the per-host counts of its progress.
    """
    hosts = set()
    for host, counts in (run.stats or {}).items():
        if (counts or {}).get("changed"):
            hosts.add(host)
    for host, counts in ((run.progress or {}).get("hosts") or {}).items():
        if (counts or {}).get("changed"):
            hosts.add(host)
    return sorted(hosts)


def decide(run, policies=None):
    """Return (seconds before a retry or None, policy, note) for an ended attempt.

    ``policies`` caches the policy of each playbook across calls.
    """
    status = RunStatus(run.status)
    if status in (RunStatus.SUCCESSFUL, RunStatus.CANCELED):
        return None, None, None
    if policies is None:
        policies = {}
    if run.playbook not in policies:
        policies[run.playbook] = policy_for(run.playbook)
    policy = policies[run.playbook]
    if policy.max_attempts <= 1:
        return None, policy, None

    number = (run.retries or 0) + 1
    kind = ending_kind(status, run.reason_code)
    changed = changed_hosts(run)
    if not policy.covers(kind):
        note = (
            f"not retried: it ended {kind} and the playbook retries only on "
            f"{', '.join(sorted(policy.retry_on))}"
        )
        return None, policy, note
    if number >= policy.max_attempts:
        note = f"not retried: attempt {number} of {policy.max_attempts} was the last"
        return None, policy, note
    # A check-mode attempt reports what it would change, and changed nothing.
    if changed and not policy.idempotent and not run.check_mode:
        note = (
            f"not retried: it changed {', '.join(changed)} and the playbook is not "
            "marked idempotent"
        )
        return None, policy, note
    delay = policy.delay(number)
    return delay, policy, f"retried as attempt {number + 1} after {delay:g} s"


def after_ending(run):
    """Record the attempt that just ended and put the run back in the queue if due.

    Runs inside the transaction in which the ending won (jobs.state.finish),
    before its commit, so no reader sees the run terminal when it is retried.
    ``run`` is the row as read in that transaction. Returns a log message
    when a retry was scheduled, else None.
    """
    return after_endings([run]).get(run.id)


def after_endings(runs):
    """Run after_ending for many ended runs; return {run id: log message} for retries.

    The attempts and notes are inserted with one statement each, so a sweep
    that ends many runs pays for them once. ``runs`` may be ORM objects or
    rows with the same attributes.
    """
    policies = {}
    attempts, notes, due = [], [], []
    for run in runs:
        try:
            delay, policy, note = decide(run, policies)
        except Exception:
            # A failed decision must not lose the ending it follows: no retry.
            logger.exception("run %s: retry decision failed; not retried", run.id)
            delay, policy, note = None, None, None
        attempts.append(
            {
                "deployment_id": run.id,
                "number": run.attempt,
                "status": run.status,
                "reason": run.reason,
                "reason_code": run.reason_code,
                "verdict": run.verdict,
                "worker_name": run.worker_name,
                "hostname": run.hostname,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "rc": run.rc,
                "stats": run.stats,
                "retry_note": note,
            }
        )
        if delay is None:
            if note:
                notes.append(
                    {
                        "deployment_id": run.id,
                        "attempt": run.attempt,
                        "text": f"[shepherd] {note}\n",
                    }
                )
        else:
            due.append((run, policy, delay))
    if attempts:
        db.session.execute(insert(Attempt), attempts)
    if notes:
        db.session.execute(insert(OutputChunk), notes)
    return {run.id: _queue_retry(run, policy, delay) for run, policy, delay in due}


def _queue_retry(run, policy, delay):
    """Queue an ended run again for its next attempt; return the log message."""
    number = (run.retries or 0) + 1
    db.session.add(
        OutputChunk(
            deployment_id=run.id,
            attempt=run.attempt,
            text=(
                f"[shepherd] attempt {number} of {policy.max_attempts} ended "
                f"{run.status}; retrying in {delay:g} s as attempt {number + 1}\n"
            ),
        )
    )
    message = (
        f"attempt {number} of {policy.max_attempts} ended {run.status} "
        f"({run.reason_code}); retry in {delay:g} s as attempt {number + 1}"
    )
    # The ORM update also refreshes ``run`` in the session: read it no more.
    result = db.session.execute(
        update(Deployment)
        .where(
            Deployment.id == run.id,
            Deployment.attempt == run.attempt,
            Deployment.status == run.status,
        )
        .values(**_retry_values(run, policy, delay))
    )
    if result.rowcount != 1:
        # The ending's own transaction locks this row, so this means a bug.
        raise RuntimeError(f"run {run.id}: the row changed while scheduling a retry")
    return message


def _retry_values(run, policy, delay):
    """Return the column values of a run queued again for its next attempt."""
    return {
        "status": RunStatus.QUEUED.value,
        "attempt": run.attempt + 1,
        "retries": (run.retries or 0) + 1,
        "max_attempts": policy.max_attempts,
        "retry_at": run.finished_at + timedelta(seconds=delay),
        # No RQ job until the retry is due: see enqueue_due.
        "job_id": None,
        "requeue_count": 0,
        # The next attempt writes its own execution fields and output file.
        "started_at": None,
        "finished_at": None,
        "heartbeat_at": None,
        "horse_pid": None,
        "horse_started": None,
        "pid": None,
        "pgid": None,
        "pid_started": None,
        "artifact_dir": None,
        "output_offset": 0,
        "rc": None,
        "stats": None,
        "progress": None,
    }


def claim(run_id, attempt, job_id):
    """Mark a due retry as enqueued under ``job_id``; True if this call did.

    The compare-and-set on the attempt and on the missing job id lets only
    one of several sweeps enqueue it. ``retry_at`` becomes the enqueue time,
    from which the lost-job rule of jobs.sweep counts.
    """
    result = db.session.execute(
        update(Deployment)
        .where(
            Deployment.id == run_id,
            Deployment.attempt == attempt,
            Deployment.status == RunStatus.QUEUED.value,
            Deployment.job_id.is_(None),
            Deployment.retry_at.is_not(None),
        )
        .values(job_id=job_id, retry_at=db_now())
    )
    db.session.commit()
    return result.rowcount == 1


def enqueue_due(connection, queue):
    """Enqueue the next attempt of every run whose retry is due; return how many.

    A sweep rule. Safe to run from several processes at once: see claim.
    If Redis fails after the claim, the lost-job rule enqueues it later.
    """
    now = database_time()
    due = db.session.scalars(
        select(Deployment).where(
            Deployment.status == RunStatus.QUEUED.value,
            Deployment.job_id.is_(None),
            Deployment.retry_at.is_not(None),
            Deployment.retry_at <= now,
        )
    ).all()
    enqueued = 0
    for run in due:
        job_id = queueing.job_id(run.id, run.attempt)
        if not claim(run.id, run.attempt, job_id):
            continue
        if Job.exists(job_id, connection=connection):
            continue
        queueing.enqueue_run(queue, run.id, run.attempt, run.timeout)
        enqueued += 1
        logger.warning(
            "run %s: retry due; enqueued attempt %s of %s as %s",
            run.id,
            (run.retries or 0) + 1,
            run.max_attempts,
            job_id,
        )
    return enqueued


def is_waiting(run):
    """Return True while a run waits for its retry to be enqueued."""
    return (
        run.status == RunStatus.QUEUED.value
        and run.retry_at is not None
        and run.job_id is None
    )
