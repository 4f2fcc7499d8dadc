"""Firing schedules: turn due occurrences into runs, once each, and keep rq-scheduler in step.

rq-scheduler contains one job per active schedule (id ``schedule-<id>``), due at
the schedule's next unrecorded occurrence. The scheduler process runs that
job itself instead of queueing it (see scheduler.py), so a busy worker never
delays the decision. ``fire_due`` records each due occurrence in SQL and
launches the run through webapp.launch, which queues the playbook job on
the normal queue. A unique row per schedule and occurrence time decides who
fires, so a second scheduler process, a stale rq-scheduler job or a retry
never fires an occurrence twice.
"""

import logging
import os
from datetime import timedelta

from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq_scheduler import Scheduler
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from webapp.catalog import CatalogError, find_playbook
from webapp.cron import CronError, due_between, next_times, normalize, parse_zone
from webapp.extensions import db
from webapp.models import (
    ACTIVE_STATUSES,
    Deployment,
    OccurrenceOutcome,
    Schedule,
    ScheduleOccurrence,
    ScheduleOverlap,
    utcnow,
)

logger = logging.getLogger(__name__)

FIRE_FUNC = "jobs.schedules.fire_schedule"
JOB_PREFIX = "schedule-"
# Missed occurrences recorded one row each; older ones share one summary row.
MAX_MISSED_ROWS = 50
# Occurrences older than this are not enumerated after a long downtime.
MAX_LOOKBACK = timedelta(days=31)
# Seconds before a schedule whose firing raised is tried again.
RETRY_DELAY = 10


def job_id(schedule_id):
    return f"{JOB_PREFIX}{schedule_id}"


def _scheduler(connection, config):
    return Scheduler(queue_name=config["QUEUE_NAME"], connection=connection)


def _expression(schedule):
    # Stored expressions were validated on save; seconds are accepted here so
    # that turning SCHEDULE_SECONDS off later does not break old rows.
    return normalize(schedule.cron, allow_seconds=True), parse_zone(schedule.timezone)


def last_recorded(schedule_ids=None):
    """Return {schedule id: time of its latest recorded occurrence}."""
    query = select(
        ScheduleOccurrence.schedule_id, func.max(ScheduleOccurrence.occurs_at)
    ).group_by(ScheduleOccurrence.schedule_id)
    if schedule_ids is not None:
        query = query.where(ScheduleOccurrence.schedule_id.in_(schedule_ids))
    return dict(db.session.execute(query).all())


def reference_time(schedule, last=None):
    """Return the time after which the schedule's occurrences are still open."""
    if last is None:
        last = last_recorded([schedule.id]).get(schedule.id)
    return max(schedule.active_since, last) if last else schedule.active_since


def next_wake(schedule, last=None):
    """Return the first occurrence not yet recorded (it may be in the past)."""
    expression, zone = _expression(schedule)
    times = next_times(expression, zone, reference_time(schedule, last), 1)
    return times[0] if times else None


# rq-scheduler registration


def register(connection, config, schedule, last=None):
    """Put the schedule's next open occurrence into rq-scheduler, or remove a paused one.

    Safe to run twice and from several processes: the job id is fixed and
    the time comes from SQL. Returns the wake-up time, or None.
    """
    if schedule.paused:
        unregister(connection, schedule.id)
        return None
    wake = next_wake(schedule, last)
    if wake is None:
        unregister(connection, schedule.id)
        return None
    _scheduler(connection, config).schedule(
        wake,
        FIRE_FUNC,
        args=[schedule.id],
        id=job_id(schedule.id),
        description=f"schedule {schedule.id} ({schedule.name})",
        meta={"version": schedule.version, "wake": wake.isoformat()},
        result_ttl=0,
    )
    return wake


def unregister(connection, schedule_id):
    """Remove the schedule's job from rq-scheduler; safe when it is absent."""
    key = job_id(schedule_id)
    connection.zrem(Scheduler.scheduled_jobs_key, key)
    try:
        Job.fetch(key, connection=connection).delete()
    except NoSuchJobError:
        pass


def registered_ids(connection):
    """Return the ids of the schedules that have a job in rq-scheduler."""
    ids = set()
    for member in connection.zrange(Scheduler.scheduled_jobs_key, 0, -1):
        name = member.decode()
        if name.startswith(JOB_PREFIX) and name[len(JOB_PREFIX) :].isdigit():
            ids.add(int(name[len(JOB_PREFIX) :]))
    return ids


def sync(connection, config):
    """Make rq-scheduler hold one job per active schedule, due at its next open time.

    Re-registers schedules whose job is missing (a Redis restart or flush)
    or due at another time, and removes jobs of deleted or paused schedules.
    Returns the number of jobs added, moved or removed. Safe to run twice.
    """
    changed = 0
    now = utcnow()
    schedules = db.session.scalars(select(Schedule)).all()
    last = last_recorded()
    active = {s.id for s in schedules if not s.paused}
    for schedule in schedules:
        if schedule.paused:
            continue
        try:
            wake = next_wake(schedule, last.get(schedule.id))
        except CronError as exc:
            logger.error("schedule %s: cannot compute its times: %s", schedule.id, exc)
            continue
        key = job_id(schedule.id)
        score = connection.zscore(Scheduler.scheduled_jobs_key, key)
        intact = score is not None and Job.exists(key, connection=connection)
        if intact and _on_time(score, wake, now):
            continue
        logger.warning(
            "schedule %s: rq-scheduler job %s, registering it for %s",
            schedule.id,
            "missing" if not intact else "due at another time",
            wake.isoformat() if wake else "never",
        )
        register(connection, config, schedule, last.get(schedule.id))
        changed += 1
    for schedule_id in registered_ids(connection) - active:
        logger.info("schedule %s: deleted or paused, removing its job", schedule_id)
        unregister(connection, schedule_id)
        changed += 1
    return changed


def _on_time(score, wake, now):
    if wake is None:
        return False
    if int(score) == int(wake.timestamp()):
        return True
    # A due schedule whose firing failed waits RETRY_DELAY seconds; keep that.
    return wake <= now and score <= now.timestamp() + RETRY_DELAY


# Firing


def handle_due(connection, config, schedule_id, now=None):
    """Fire the schedule's due occurrences, then register its next one.

    Called by the scheduler when the rq-scheduler job comes due. On an error
    the job is moved RETRY_DELAY seconds ahead and the error is logged.
    """
    now = now or utcnow()
    try:
        fire_due(schedule_id, now)
        schedule = db.session.get(Schedule, schedule_id)
        if schedule is None:
            unregister(connection, schedule_id)
        else:
            register(connection, config, schedule)
    except Exception as exc:
        # Any error here would end the scheduler loop and every other schedule
        # with it: log it and try this schedule again later.
        db.session.rollback()
        logger.exception(
            "schedule %s: firing failed (%s); retrying in %s s",
            schedule_id,
            exc,
            RETRY_DELAY,
        )
        retry_at = int(now.timestamp()) + RETRY_DELAY
        connection.zadd(Scheduler.scheduled_jobs_key, {job_id(schedule_id): retry_at})


def fire_schedule(schedule_id):
    """RQ job form of ``handle_due``, for a worker that receives the trigger job.

    The scheduler normally runs the trigger itself. Safe to run twice.
    """
    from webapp.launch import redis_connection

    handle_due(redis_connection(), current_app.config, schedule_id)


def fire_due(schedule_id, now):
    """Record every occurrence due by ``now`` and launch the run of the latest.

    Occurrences before the latest are recorded as missed, so downtime never
    causes a burst of runs. The latest runs if it is at most ``missed_grace``
    seconds late and the overlap policy allows it. Otherwise it is recorded
    as missed or skipped, with the reason. Returns the new rows, which are
    empty when nothing was due or another process recorded them first.
    """
    schedule = db.session.get(Schedule, schedule_id)
    if schedule is None or schedule.paused:
        return []
    expression, zone = _expression(schedule)
    reference = reference_time(schedule)
    start = max(reference, now - MAX_LOOKBACK)
    due, total = due_between(expression, zone, start, now, MAX_MISSED_ROWS + 1)
    if not due:
        return []

    rows = _missed_rows(
        schedule, due[:-1], total - len(due), start if start > reference else None
    )
    latest = due[-1]
    claim = _decide(schedule, latest, now)
    rows.append(claim)
    db.session.add_all(rows)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        logger.info(
            "schedule %s: occurrence %s already recorded by another process",
            schedule.id,
            latest.isoformat(),
        )
        return []

    if claim.outcome == OccurrenceOutcome.STARTED.value:
        _launch(schedule, claim)
    else:
        db.session.commit()
        logger.info(
            "schedule %s: occurrence %s %s: %s",
            schedule.id,
            latest.isoformat(),
            claim.outcome,
            claim.reason,
        )
    if len(rows) > 1:
        logger.warning(
            "schedule %s: %d occurrence(s) before %s were missed",
            schedule.id,
            total - 1,
            latest.isoformat(),
        )
    return rows


def _recorded_by():
    return f"{current_app.config['HOSTNAME']} pid {os.getpid()}"


def _occurrence(schedule, at, outcome, reason=None):
    return ScheduleOccurrence(
        schedule_id=schedule.id,
        occurs_at=at,
        outcome=outcome.value,
        reason=reason,
        recorded_by=_recorded_by(),
        recorded_at=utcnow(),
    )


def _missed_rows(schedule, missed, left_out, lookback_start):
    """Return missed rows for ``missed``; the oldest also counts what is left out."""
    rows = [
        _occurrence(
            schedule,
            at,
            OccurrenceOutcome.MISSED,
            "not fired on time because no scheduler was running or it fell "
            "behind. Only the latest overdue occurrence runs.",
        )
        for at in missed
    ]
    if rows and left_out:
        rows[
            0
        ].reason += (
            f" {left_out} earlier occurrence(s) were missed too and are not listed."
        )
    if rows and lookback_start:
        rows[
            0
        ].reason += (
            f" Occurrences before {lookback_start.isoformat()} were not counted."
        )
    return rows
    return rows


def _decide(schedule, at, now):
    """Return the occurrence row for the latest due time, with its outcome."""
    late = (now - at).total_seconds()
    if late > schedule.missed_grace:
        return _occurrence(
            schedule,
            at,
            OccurrenceOutcome.MISSED,
            f"{late:.0f} s late when the scheduler saw it, more than the missed-run "
            f"grace of {schedule.missed_grace} s",
        )
    if schedule.overlap == ScheduleOverlap.SKIP.value:
        previous = db.session.scalars(
            select(Deployment)
            .where(
                Deployment.trigger == schedule.trigger,
                Deployment.status.in_([s.value for s in ACTIVE_STATUSES]),
            )
            .order_by(Deployment.id.desc())
            .limit(1)
        ).first()
        if previous is not None:
            return _occurrence(
                schedule,
                at,
                OccurrenceOutcome.SKIPPED,
                f"the previous run {previous.id} of this schedule is still "
                f"{previous.status} and the overlap policy is skip",
            )
    problem = _catalog_problem(schedule)
    if problem:
        return _occurrence(schedule, at, OccurrenceOutcome.FAILED, problem)
    return _occurrence(schedule, at, OccurrenceOutcome.STARTED)


def _catalog_problem(schedule):
    # Checked before the row is written, so the database is not held locked
    # while ansible-inventory reads the inventory.
    try:
        find_playbook(current_app.config["PLAYBOOK_DIR"], schedule.playbook)
        current_app.extensions["inventory"].validate_target(schedule.target)
    except CatalogError as exc:
        return f"the run was not created: {exc}"
    return None


def _launch(schedule, claim):
    from webapp.launch import LaunchError, launch

    try:
        # launch() commits the occurrence rows together with the run.
        run = launch(
            schedule.playbook,
            schedule.target,
            schedule.extra_vars,
            False,
            schedule.timeout,
            launched_by=f"schedule {schedule.name!r} (created by {schedule.created_by})",
            trigger=schedule.trigger,
            # Only admins create or change schedules.
            privileged_vars=True,
        )
    except LaunchError as exc:
        claim.outcome = OccurrenceOutcome.FAILED.value
        claim.reason = f"the run was not created: {exc}"
        db.session.commit()
        logger.error(
            "schedule %s: occurrence %s failed: %s",
            schedule.id,
            claim.occurs_at.isoformat(),
            exc,
        )
        return None
    # NOTE: launch() has already committed the claim without its run id, so
    # readers can briefly see a started occurrence with no run. If this process
    # dies right here, the link stays empty, but the run's trigger still names
    # the schedule.
    claim.deployment_id = run.id
    db.session.commit()
    logger.info(
        "run %s: started by schedule %s for its occurrence %s",
        run.id,
        schedule.id,
        claim.occurs_at.isoformat(),
    )
    return run
