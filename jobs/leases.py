"""Host leases: a run takes every host it will touch before it starts.

Leases are rows of ``host_leases`` with the host name as primary key, so two
workers can never hold one host, and they outlive a Redis restart. A run
takes all of its hosts in one transaction or none. When another run has a
host, the work horse leaves the run queued and puts a new job for it in
rq-scheduler's schedule, so it tries again later. Drain mode makes a run
wait the same way. Leases are deleted when the run ends
(jobs.state.finish) and, as a backstop, in every sweep.

A playbook whose header has ``# leases: none`` takes no lease (read-only
reports, for example).
"""

import logging
import re
from datetime import timedelta
from pathlib import Path

from flask import current_app
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from webapp.catalog import read_header
from webapp.extensions import db
from webapp.models import (
    ACTIVE_STATUSES,
    Deployment,
    HostLease,
    OutputChunk,
    RunStatus,
    database_time,
    db_now,
)
from webapp.redis_conn import connect, get_queue

from . import drain, queueing

logger = logging.getLogger(__name__)

ACTIVE = [s.value for s in ACTIVE_STATUSES]
ENDED = Deployment.status.not_in(ACTIVE)
WAIT_SUFFIX = re.compile(r"-w(\d+)$")


def takes_leases(playbook_dir, playbook):
    """Return False when the playbook's header opts out with ``leases: none``."""
    try:
        header = read_header(Path(playbook_dir) / playbook)
    except OSError:
        return True
    return header.get("leases", "").strip().lower() != "none"


def hosts_for(run, inventory, playbook_dir):
    """Return the sorted hosts a run touches, or [] when it takes no lease.

    The target is expanded through the inventory and narrowed to the run's
    host limit, the same hosts that ansible-playbook will run on.
    """
    if not takes_leases(playbook_dir, run.playbook):
        return []
    hosts = set(inventory.expand(run.target))
    if run.limit_hosts:
        hosts &= set(run.limit_hosts)
    return sorted(hosts)


def acquire(run_id, attempt, hosts):
    """Take every host in ``hosts`` for a queued run, all or none.

    Returns [] when the run now holds them all, the blocking holders (see
    ``holders``) when another run holds any, and None when the run is no
    longer queued for this attempt. Safe to call twice, because leases the
    run already has are kept.
    """
    hosts = sorted(set(hosts))
    _free_ended(hosts)
    try:
        queued = db.session.scalar(
            select(Deployment.id).where(
                Deployment.id == run_id,
                Deployment.attempt == attempt,
                Deployment.status == RunStatus.QUEUED.value,
            )
        )
        if queued is None:
            db.session.rollback()
            return None
        existing = db.session.scalars(
            select(HostLease).where(HostLease.host.in_(hosts))
        ).all()
        if any(lease.deployment_id != run_id for lease in existing):
            db.session.rollback()
            return holders(hosts, run_id)
        mine = {lease.host for lease in existing}
        db.session.add_all(
            HostLease(host=host, deployment_id=run_id, acquired_at=db_now())
            for host in hosts
            if host not in mine
        )
        db.session.commit()
    except IntegrityError:
        # Another worker inserted one of these hosts first.
        db.session.rollback()
        return holders(hosts, run_id) or [{"host": hosts[0], "run_id": None}]
    logger.info("run %s: leased %s", run_id, ", ".join(hosts))
    return []


def _free_ended(hosts):
    """Delete leases on ``hosts`` whose run has ended: the sweep may not have yet."""
    db.session.execute(
        delete(HostLease).where(HostLease.host.in_(hosts), _holder_is(ENDED))
    )
    db.session.commit()


def _holder_is(condition):
    """Return a filter on leases whose run meets ``condition``.

    A correlated EXISTS costs one primary-key lookup per lease, where an IN
    over the runs that meet the condition would read the whole history.
    """
    return (
        select(Deployment.id)
        .where(Deployment.id == HostLease.deployment_id, condition)
        .exists()
    )


def release(*run_ids):
    """Delete the leases of runs inside the caller's transaction, without committing."""
    return db.session.execute(
        delete(HostLease).where(HostLease.deployment_id.in_(run_ids))
    ).rowcount


def release_if_ended(run_id):
    """Delete a run's leases if the run has ended, and commit. Safe to call twice."""
    released = db.session.execute(
        delete(HostLease).where(HostLease.deployment_id == run_id, _holder_is(ENDED))
    ).rowcount
    db.session.commit()
    if released:
        logger.info("run %s: released %d lease(s) of the ended run", run_id, released)
    return released


def release_stale(grace):
    """Delete leases that no live run needs; return how many went.

    Those are the leases of runs that ended, and of queued runs that took
    them more than ``grace`` seconds ago: a queued run holds leases only
    between taking them and being marked running, so its work horse died.
    """
    cutoff = database_time() - timedelta(seconds=grace)
    released = db.session.execute(
        delete(HostLease).where(
            or_(
                _holder_is(ENDED),
                and_(
                    _holder_is(Deployment.status == RunStatus.QUEUED.value),
                    HostLease.acquired_at < cutoff,
                ),
            )
        )
    ).rowcount
    db.session.commit()
    return released


def holders(hosts, run_id=None):
    """Return the live leases on ``hosts`` with their runs, leaving out ``run_id``.

    Each entry: host, run_id, launched_by, playbook, queued_at, acquired_at.
    """
    if not hosts:
        return []
    rows = db.session.execute(
        select(HostLease, Deployment)
        .join(Deployment, Deployment.id == HostLease.deployment_id)
        .where(HostLease.host.in_(sorted(hosts)), Deployment.status.in_(ACTIVE))
        .order_by(HostLease.host)
    ).all()
    return [_describe_lease(lease, run) for lease, run in rows if run.id != run_id]


def current():
    """Return every live lease, sorted by host, as dicts like ``holders``."""
    rows = db.session.execute(
        select(HostLease, Deployment)
        .join(Deployment, Deployment.id == HostLease.deployment_id)
        .where(Deployment.status.in_(ACTIVE))
        .order_by(HostLease.host)
    ).all()
    return [_describe_lease(lease, run) for lease, run in rows]


def _describe_lease(lease, run):
    return {
        "host": lease.host,
        "run_id": run.id,
        "launched_by": run.launched_by,
        "playbook": run.playbook,
        "status": run.status,
        "queued_at": run.queued_at.isoformat() if run.queued_at else None,
        "acquired_at": lease.acquired_at.isoformat() if lease.acquired_at else None,
    }


def describe_wait(blocking):
    """Return "waiting for web01, held by run 812 (launched by alice at 10:02)"."""
    by_run = {}
    for entry in blocking:
        by_run.setdefault(entry.get("run_id"), []).append(entry)
    parts = []
    for run_id, entries in by_run.items():
        hosts = ", ".join(entry["host"] for entry in entries)
        if run_id is None:
            parts.append(f"{hosts}, just taken by another run")
            continue
        first = entries[0]
        launched = first["queued_at"][11:16] if first["queued_at"] else "?"
        parts.append(
            f"{hosts}, held by run {run_id} "
            f"(launched by {first['launched_by']} at {launched} UTC)"
        )
    return "waiting for " + "; ".join(parts)


# NOTE: runs waiting for the same host are not served in launch order: the
# first one to try after the holder ends takes the host.
def before_start(run_id, attempt, job):
    """Check drain mode and take the run's leases; return True if it may start.

    When it may not, the run stays queued: a job for it is put in
    rq-scheduler's schedule to try again and the row's job_id points at it.
    Returns True as well when the run is no longer queued for ``attempt``,
    so that jobs.state.mark_running turns the execution away.
    """
    config = current_app.config
    run = db.session.get(Deployment, run_id, populate_existing=True)
    if run is None or run.status != RunStatus.QUEUED.value or run.attempt != attempt:
        return True
    if drain.is_draining():
        _wait(run, job, config["DRAIN_RETRY_INTERVAL"], "the service is draining")
        return False

    inventory = current_app.extensions["inventory"]
    hosts = hosts_for(run, inventory, config["PLAYBOOK_DIR"])
    if not hosts:
        return True
    blocking = acquire(run_id, attempt, hosts)
    if not blocking:
        return True
    _wait(run, job, config["LEASE_RETRY_INTERVAL"], describe_wait(blocking))
    return False


def _wait(run, job, delay, reason):
    """Schedule the run's next try in ``delay`` seconds and point its row at it."""
    config = current_app.config
    base = queueing.job_id(run.id, run.attempt)
    previous = (job.meta or {}) if job is not None else {}
    match = WAIT_SUFFIX.search(job.id) if job is not None else None
    number = int(match.group(1)) + 1 if match else 1
    connection = job.connection if job is not None else connect(config["REDIS_URL"])
    queue = get_queue(config, connection)

    # The new job exists before the row names it, so a sweep never finds the
    # row pointing at a missing job.
    new_job = queueing.schedule_run(
        queue,
        run.id,
        run.attempt,
        run.timeout,
        f"{base}-w{number}",
        delay,
        meta={"wait_reason": reason},
    )
    changed = previous.get("wait_reason") != reason
    if not _point_to_job(run.id, run.attempt, new_job.id, reason if changed else None):
        queueing.unschedule(connection, new_job.id)
        new_job.delete()
        return
    if changed:
        logger.info("run %s: %s; trying again every %g s", run.id, reason, delay)


def _point_to_job(run_id, attempt, job_id, note):
    """Set the job_id of a run still queued for ``attempt``; True if set.

    A ``note`` is appended to the run's output in the same transaction.
    """
    result = db.session.execute(
        update(Deployment)
        .where(
            Deployment.id == run_id,
            Deployment.attempt == attempt,
            Deployment.status == RunStatus.QUEUED.value,
        )
        .values(job_id=job_id)
    )
    if result.rowcount != 1:
        db.session.rollback()
        return False
    if note:
        db.session.add(OutputChunk(deployment_id=run_id, text=f"[shepherd] {note}\n"))
    db.session.commit()
    return True
