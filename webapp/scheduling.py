"""Schedules as the web app changes them: validate input, save to SQL, tell rq-scheduler.

Forms and the JSON API both go through ``create``, ``update`` and ``delete``.
Invalid input raises ScheduleError before anything is written. Telling
rq-scheduler is best effort: the scheduler reloads every schedule from SQL
every SWEEP_INTERVAL seconds anyway.
"""

import logging

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import select

from jobs import schedules as firing

from . import audit, cron
from .catalog import CatalogError, find_playbook
from .extensions import db
from .launch import LaunchError, parse_extra_vars, parse_timeout, redis_connection
from .models import (
    Deployment,
    Schedule,
    ScheduleOccurrence,
    ScheduleOverlap,
    utcnow,
)

logger = logging.getLogger(__name__)

FIELDS = (
    "name",
    "playbook",
    "target",
    "extra_vars",
    "cron",
    "timezone",
    "timeout",
    "overlap",
    "paused",
    "missed_grace",
)
DEFAULT_MISSED_GRACE = 3600
# A scheduler fires a few seconds late at worst; a shorter grace would turn
# ordinary occurrences into missed ones.
MIN_MISSED_GRACE = 60
UPCOMING_COUNT = 5


class ScheduleError(ValueError):
    """Schedule input is invalid; ``field`` and ``value`` name the culprit."""

    def __init__(self, message, field=None, value=None, status=400):
        super().__init__(message)
        self.field = field
        self.value = value
        self.status = status


def _parse_name(raw):
    if raw is not None and not isinstance(raw, str):
        raise ScheduleError(
            f"Invalid name {raw!r}: give text such as 'Weekly RedHat updates'.",
            "name",
            raw,
        )
    if not raw or not raw.strip():
        raise ScheduleError(
            "A name is required, for example 'Weekly RedHat updates'.", "name", raw
        )
    if len(raw.strip()) > 255:
        raise ScheduleError(
            f"Invalid name {raw[:40]!r}...: use at most 255 characters.", "name", raw
        )
    return raw.strip()


def _parse_overlap(raw):
    if raw in (None, ""):
        return ScheduleOverlap.SKIP.value
    values = [o.value for o in ScheduleOverlap]
    if raw not in values:
        raise ScheduleError(
            f"Invalid overlap policy {raw!r}: use 'skip' (default) or 'allow'.",
            "overlap",
            raw,
        )
    return raw


def _parse_paused(raw):
    if raw in (None, "", False, "false", "0", "off", "no"):
        return False
    if raw in (True, "true", "1", "on", "yes"):
        return True
    raise ScheduleError(f"Invalid paused {raw!r}: give true or false.", "paused", raw)


def _parse_grace(raw):
    if raw is None or raw == "":
        return DEFAULT_MISSED_GRACE
    try:
        if isinstance(raw, bool) or float(raw) != int(float(raw)):
            raise ValueError
        value = int(float(raw))
    except (TypeError, ValueError, OverflowError):
        raise ScheduleError(
            f"Invalid missed-run grace {raw!r}: give a whole number of seconds.",
            "missed_grace",
            raw,
        ) from None
    if value < MIN_MISSED_GRACE:
        raise ScheduleError(
            f"Invalid missed-run grace {raw!r}: give at least {MIN_MISSED_GRACE} "
            "seconds.",
            "missed_grace",
            raw,
        )
    return value


def _parse_playbook(raw):
    try:
        return find_playbook(current_app.config["PLAYBOOK_DIR"], raw).path
    except CatalogError as exc:
        raise ScheduleError(str(exc), exc.field, exc.value) from exc


def _parse_target(raw):
    try:
        current_app.extensions["inventory"].validate_target(raw)
    except CatalogError as exc:
        raise ScheduleError(str(exc), exc.field, exc.value) from exc
    return raw


def _parse_cron(raw):
    allow_seconds = current_app.config.get("SCHEDULE_SECONDS", False)
    try:
        return cron.normalize(raw, allow_seconds=allow_seconds)
    except cron.CronError as exc:
        raise ScheduleError(str(exc), exc.field, exc.value) from exc


def _parse_timezone(raw):
    if raw is None or raw == "":
        return "UTC"
    try:
        return cron.parse_zone(raw).key
    except cron.CronError as exc:
        raise ScheduleError(str(exc), exc.field, exc.value) from exc


def _parse_launch_field(parse, *args):
    try:
        return parse(*args)
    except LaunchError as exc:
        raise ScheduleError(str(exc), exc.field, exc.value) from exc


PARSERS = {
    "name": _parse_name,
    "playbook": _parse_playbook,
    "target": _parse_target,
    "extra_vars": lambda raw: _parse_launch_field(parse_extra_vars, raw),
    "cron": _parse_cron,
    "timezone": _parse_timezone,
    "timeout": lambda raw: _parse_launch_field(parse_timeout, raw, None),
    "overlap": _parse_overlap,
    "paused": _parse_paused,
    "missed_grace": _parse_grace,
}


def validate(data, partial=False):
    """Return the cleaned values of ``data``; raise ScheduleError on the first bad one.

    With ``partial`` (an update) only the given fields are read; otherwise
    name, playbook, target and cron are required and the rest get defaults.
    """
    if not isinstance(data, dict):
        raise ScheduleError(
            "The request body must be a JSON object such as "
            '{"name": "Nightly ping", "playbook": "ping.yml", "target": "local", '
            '"cron": "0 3 * * *"}.'
        )
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ScheduleError(
            f"Unknown field {unknown[0]!r}: schedules have {', '.join(FIELDS)}.",
            unknown[0],
            unknown[0],
        )
    names = [f for f in FIELDS if f in data] if partial else FIELDS
    return {name: PARSERS[name](data.get(name)) for name in names}


def create(data, created_by):
    """Validate ``data``, save a new schedule and register it with rq-scheduler."""
    values = validate(data)
    now = utcnow()
    schedule = Schedule(
        **values,
        version=1,
        active_since=now,
        created_by=created_by,
        created_at=now,
        updated_at=now,
    )
    db.session.add(schedule)
    db.session.commit()
    audit.record(
        "schedule.create", schedule.id, _audit_detail(schedule), actor=created_by
    )
    logger.info(
        "schedule %s: created by %s: %s on %s at %r (%s)",
        schedule.id,
        created_by,
        schedule.playbook,
        schedule.target,
        schedule.cron,
        schedule.timezone,
    )
    notify_scheduler(schedule)
    return schedule


def update(schedule, data, changed_by):
    """Apply the fields in ``data`` to ``schedule`` and re-register it.

    Changing the cron expression or time zone, or resuming, starts counting
    occurrences from now, so no old occurrence runs or counts as missed.
    """
    values = validate(data, partial=True)
    now = utcnow()
    restarts = (
        values.get("cron", schedule.cron) != schedule.cron
        or values.get("timezone", schedule.timezone) != schedule.timezone
        or (schedule.paused and values.get("paused") is False)
    )
    for name, value in values.items():
        setattr(schedule, name, value)
    if restarts:
        schedule.active_since = now
    schedule.version += 1
    schedule.updated_at = now
    db.session.commit()
    audit.record(
        "schedule.update",
        schedule.id,
        {**_audit_detail(schedule), "changed": sorted(values)},
        actor=changed_by,
    )
    logger.info(
        "schedule %s: changed by %s: %s", schedule.id, changed_by, sorted(values)
    )
    notify_scheduler(schedule)
    return schedule


def delete(schedule, deleted_by):
    """Delete a schedule and its occurrence records; its runs stay in the history."""
    schedule_id = schedule.id
    name = schedule.name
    db.session.delete(schedule)
    db.session.commit()
    audit.record("schedule.delete", schedule_id, {"name": name}, actor=deleted_by)
    logger.info("schedule %s: deleted by %s", schedule_id, deleted_by)
    try:
        firing.unregister(redis_connection(), schedule_id)
    except RedisError as exc:
        logger.warning(
            "schedule %s: Redis unreachable (%s); the scheduler removes its job "
            "at its next reload",
            schedule_id,
            exc,
        )


def _audit_detail(schedule):
    # Extra vars may contain secrets, so only their names are recorded.
    return {
        "name": schedule.name,
        "playbook": schedule.playbook,
        "target": schedule.target,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "paused": schedule.paused,
        "extra_vars": sorted(schedule.extra_vars or {}),
    }


def notify_scheduler(schedule):
    """Register the schedule's next occurrence with rq-scheduler now, if Redis is reachable."""
    try:
        firing.register(redis_connection(), current_app.config, schedule)
    except RedisError as exc:
        logger.warning(
            "schedule %s: Redis unreachable (%s); the scheduler loads it at its "
            "next reload",
            schedule.id,
            exc,
        )


def upcoming(schedule, count=UPCOMING_COUNT, now=None):
    """Return the next ``count`` run times as (UTC, local) pairs of aware datetimes."""
    now = now or utcnow()
    zone = cron.parse_zone(schedule.timezone)
    expression = cron.normalize(schedule.cron, allow_seconds=True)
    start = max(now, schedule.active_since)
    times = cron.next_times(expression, zone, start, count)
    return [(at, at.astimezone(zone)) for at in times]


def history(schedule_id, limit=50):
    """Return the latest occurrences of a schedule with their runs, newest first."""
    return db.session.execute(
        select(ScheduleOccurrence, Deployment)
        .outerjoin(Deployment, ScheduleOccurrence.deployment_id == Deployment.id)
        .where(ScheduleOccurrence.schedule_id == schedule_id)
        .order_by(ScheduleOccurrence.occurs_at.desc())
        .limit(limit)
    ).all()


def schedule_dict(schedule, with_history=False):
    """Return the JSON form of a schedule, with its next run times."""
    data = schedule.to_dict()
    data["next_runs"] = (
        []
        if schedule.paused
        else [
            {"utc": at.isoformat(), "local": local.isoformat()}
            for at, local in upcoming(schedule)
        ]
    )
    if with_history:
        data["history"] = [
            {
                **occurrence.to_dict(),
                "run_status": run.status if run else None,
            }
            for occurrence, run in history(schedule.id)
        ]
    return data
