"""Figures for the dashboard: live counts, alerts and the chart data behind /api/stats.

Every figure comes from SQL aggregates over the run history (grouped and
counted in the database, never loaded row by row) plus a few Redis reads for
workers and the last sweep.
"""

import json
import time
from datetime import timedelta

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import Float, String, and_, func, literal_column, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from . import history
from .catalog import list_playbooks
from .extensions import db
from .models import Deployment, RunStatus, database_time
from .redis_conn import count_workers

# Statuses counted as failures for the alert banner.
FAILURE_STATUSES = (
    RunStatus.FAILED.value,
    RunStatus.TIMEOUT.value,
    RunStatus.ABANDONED.value,
)
# Runs whose duration measures how long a playbook takes: those that ended by
# themselves, not canceled, timed out or abandoned ones.
DURATION_STATUSES = (RunStatus.SUCCESSFUL.value, RunStatus.FAILED.value)
STATUS_ORDER = [status.value for status in RunStatus]
HOURS = 24
DAYS = 30
UNKNOWN_FAMILY = "Unknown"
# Seconds a web process reuses the 30-day chart series before computing
# them again.
SLOW_SERIES_SECONDS = 30
STATS_CACHE_KEY = "shepherd.dashboard_series"
# The scheduler counts as dead when its last sweep is older than this many
# sweep intervals.
SCHEDULER_MISSED_SWEEPS = 3


class hour_bucket(FunctionElement):
    """The hour of a timestamp as text, ``YYYY-MM-DD HH:00``."""

    type = String()
    inherit_cache = True


class day_bucket(FunctionElement):
    """The day of a timestamp as text, ``YYYY-MM-DD``."""

    type = String()
    inherit_cache = True


class seconds_between(FunctionElement):
    """Seconds from the first timestamp to the second, as a float."""

    type = Float()
    inherit_cache = True


@compiles(hour_bucket, "sqlite")
def _hour_sqlite(element, compiler, **kw):
    return f"strftime('%Y-%m-%d %H:00', {compiler.process(element.clauses, **kw)})"


@compiles(hour_bucket, "postgresql")
def _hour_postgresql(element, compiler, **kw):
    column = compiler.process(element.clauses, **kw)
    return f"to_char(date_trunc('hour', {column}), 'YYYY-MM-DD HH24:00')"


@compiles(day_bucket, "sqlite")
def _day_sqlite(element, compiler, **kw):
    return f"strftime('%Y-%m-%d', {compiler.process(element.clauses, **kw)})"


@compiles(day_bucket, "postgresql")
def _day_postgresql(element, compiler, **kw):
    return f"to_char({compiler.process(element.clauses, **kw)}, 'YYYY-MM-DD')"


@compiles(seconds_between, "sqlite")
def _seconds_sqlite(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


@compiles(seconds_between, "postgresql")
def _seconds_postgresql(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"extract(epoch from ({end} - {start}))"


def summary(now=None):
    """Return the live counts, worker and scheduler health, and the alerts."""
    from jobs.sweep import LAST_SWEEP_KEY

    from .launch import queue, redis_connection

    config = current_app.config
    now = now or database_time()
    counts = dict(
        db.session.execute(
            select(Deployment.status, func.count())
            .where(
                Deployment.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
            )
            .group_by(Deployment.status)
        ).all()
    )
    stuck = db.session.scalar(select(func.count()).where(history.stuck_condition(now)))
    failures = db.session.scalar(
        select(func.count()).where(
            Deployment.finished_at >= now - timedelta(hours=1),
            Deployment.status.in_(FAILURE_STATUSES),
        )
    )
    result = {
        "queued": counts.get(RunStatus.QUEUED.value, 0),
        "running": counts.get(RunStatus.RUNNING.value, 0),
        "stuck": stuck,
        "failures_last_hour": failures,
        "failure_threshold": config["FAILURE_ALERT_THRESHOLD"],
        "workers": None,
        "queue_depth": None,
        "sweep_age": None,
        "scheduler_alive": None,
        "redis_error": None,
    }
    try:
        connection = redis_connection()
        result["workers"] = count_workers(connection)
        result["queue_depth"] = queue().count
        raw = connection.get(LAST_SWEEP_KEY)
        if raw:
            result["sweep_age"] = max(0.0, time.time() - json.loads(raw)["at"])
        limit = SCHEDULER_MISSED_SWEEPS * config["SWEEP_INTERVAL"]
        result["scheduler_alive"] = (
            result["sweep_age"] is not None and result["sweep_age"] <= limit
        )
    except RedisError as exc:
        result["redis_error"] = str(exc)
    result["alerts"] = alerts(result)
    return result


def alerts(figures):
    """Return the alert banners, as {level, code, text}, for ``summary`` figures."""
    config = current_app.config
    found = []
    if figures["redis_error"]:
        found.append(
            _alert(
                "redis",
                f"Redis is unreachable ({figures['redis_error']}): runs cannot "
                "be queued or started.",
            )
        )
    threshold = figures["failure_threshold"]
    if figures["failures_last_hour"] >= threshold:
        found.append(
            _alert(
                "failures",
                f"{figures['failures_last_hour']} runs failed, timed out or were "
                f"abandoned in the last hour (alert threshold {threshold}).",
            )
        )
    if figures["stuck"]:
        found.append(
            _alert(
                "stuck",
                f"{figures['stuck']} running run(s) are stuck: no heartbeat for "
                f"{config['HEARTBEAT_GRACE']:g} s or running longer than "
                f"{history.format_duration(config['STUCK_AFTER'])}.",
            )
        )
    if figures["workers"] == 0:
        found.append(
            _alert(
                "no_worker",
                "No worker is alive: queued runs will not start. Start one "
                "with `python worker.py`.",
            )
        )
    if figures["scheduler_alive"] is False:
        age = figures["sweep_age"]
        seen = (
            "has never swept"
            if age is None
            else f"last swept {history.format_duration(age)} ago"
        )
        found.append(
            _alert(
                "no_scheduler",
                f"No scheduler is alive ({seen}): lost runs are not repaired. "
                "Start it with `python scheduler.py`.",
            )
        )
    return found


def _alert(code, text):
    return {"level": "danger", "code": code, "text": text}


def stats():
    """Return everything the dashboard draws: live figures and chart series.

    The live figures and the last 24 hours are computed on every call. The
    30-day series cost more (they read most of a long history), so each web
    process reuses them for up to SLOW_SERIES_SECONDS.
    """
    now = database_time()
    hour_start = now.replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=HOURS - 1
    )
    hour_labels = [
        (hour_start + timedelta(hours=i)).strftime("%Y-%m-%d %H:00")
        for i in range(HOURS)
    ]
    per_hour = _series(hour_bucket(Deployment.queued_at), hour_start, hour_labels)
    slow = _slow_series(now)
    return {
        "now": now.isoformat(),
        "summary": summary(now),
        "per_hour": per_hour,
        "per_day": slow["per_day"],
        "success_rate": {
            "last_24h": _success_rate(per_hour),
            "last_30d": _success_rate(slow["per_day"]),
        },
        "durations": slow["durations"],
        "os_families": slow["os_families"],
    }


def _slow_series(now):
    cached = current_app.extensions.get(STATS_CACHE_KEY)
    today = now.date()
    if (
        cached
        and cached[0] == today
        and time.monotonic() - cached[1] < SLOW_SERIES_SECONDS
    ):
        return cached[2]
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=DAYS - 1
    )
    day_labels = [
        (day_start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(DAYS)
    ]
    series = {
        "per_day": _series(day_bucket(Deployment.queued_at), day_start, day_labels),
        "durations": durations(day_start),
        "os_families": os_families(day_start),
    }
    current_app.extensions[STATS_CACHE_KEY] = (today, time.monotonic(), series)
    return series


def _series(bucket, since, labels):
    """Return {labels, statuses: {status: [count per label]}} of runs queued since."""
    rows = db.session.execute(
        select(bucket.label("bucket"), Deployment.status, func.count())
        .where(Deployment.queued_at >= since)
        .group_by(literal_column("bucket"), Deployment.status)
    ).all()
    index = {label: i for i, label in enumerate(labels)}
    series = {}
    for label, status, count in rows:
        if label not in index:
            continue
        series.setdefault(status, [0] * len(labels))[index[label]] += count
    ordered = {s: series[s] for s in STATUS_ORDER if s in series}
    return {"labels": labels, "statuses": ordered}


def _success_rate(series):
    """Return successful runs over ended runs in a series, or None with none ended."""
    ended = sum(
        sum(counts)
        for status, counts in series["statuses"].items()
        if status not in (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
    )
    successful = sum(series["statuses"].get(RunStatus.SUCCESSFUL.value, []))
    return None if ended == 0 else successful / ended


def durations(since):
    """Return [{playbook, runs, p50, p95}] of runs that ended by themselves since.

    Percentiles use the nearest-rank method, ranked in SQL with window
    functions, so one row per playbook leaves the database.
    """
    # Materialized first, so the database reads the finish-time index once
    # instead of walking every run in playbook order for the window.
    ended = (
        select(
            Deployment.playbook.label("playbook"),
            seconds_between(Deployment.started_at, Deployment.finished_at).label(
                "seconds"
            ),
        )
        .where(
            Deployment.finished_at >= since,
            Deployment.status.in_(DURATION_STATUSES),
            Deployment.started_at.is_not(None),
        )
        .cte("ended")
        .prefix_with("MATERIALIZED")
    )
    ranked = select(
        ended.c.playbook,
        ended.c.seconds,
        func.row_number()
        .over(partition_by=ended.c.playbook, order_by=ended.c.seconds)
        .label("rank"),
        func.count().over(partition_by=ended.c.playbook).label("runs"),
    ).subquery()
    # Nearest rank: the ceil(p * n)-th value, in integer arithmetic.
    p50_rank = (ranked.c.runs * 50 + 99) // 100
    p95_rank = (ranked.c.runs * 95 + 99) // 100
    rows = db.session.execute(
        select(
            ranked.c.playbook,
            ranked.c.runs,
            func.max(ranked.c.seconds).filter(ranked.c.rank == p50_rank),
            func.max(ranked.c.seconds).filter(ranked.c.rank == p95_rank),
        )
        .where(and_(ranked.c.rank.in_([p50_rank, p95_rank])))
        .group_by(ranked.c.playbook, ranked.c.runs)
        .order_by(ranked.c.playbook)
    ).all()
    # PostgreSQL returns the seconds as Decimal, which JSON would make a string.
    return [
        {"playbook": playbook, "runs": runs, "p50": _float(p50), "p95": _float(p95)}
        for playbook, runs, p50, p95 in rows
    ]


def _float(value):
    return None if value is None else float(value)


def os_families(since):
    """Return {family: runs} of runs queued since, by the OS family of their target.

    The family is the target's ``os_family`` host var (a group's when all its
    hosts agree), else the playbook's ``os_family`` header, else Unknown.
    """
    inventory = current_app.extensions["inventory"]
    targets = inventory.targets()
    target_family = {
        entry["name"]: entry["os_family"]
        for entry in targets["groups"] + targets["hosts"]
    }
    playbook_family = {
        entry.path: entry.os_family
        for entry in list_playbooks(current_app.config["PLAYBOOK_DIR"])
    }
    # Materialized first, for the same reason as in durations().
    recent = (
        select(Deployment.target, Deployment.playbook)
        .where(Deployment.queued_at >= since)
        .cte("recent")
        .prefix_with("MATERIALIZED")
    )
    rows = db.session.execute(
        select(recent.c.target, recent.c.playbook, func.count()).group_by(
            recent.c.target, recent.c.playbook
        )
    ).all()
    counts = {}
    for target, playbook, count in rows:
        family = (
            target_family.get(target) or playbook_family.get(playbook) or UNKNOWN_FAMILY
        )
        counts[family] = counts.get(family, 0) + count
    return dict(sorted(counts.items(), key=lambda item: -item[1]))
