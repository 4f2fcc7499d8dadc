"""Reading the run history: keyset pages of SQL rows joined with live RQ state.

List queries never load output text; output is read in chunk order only for
one run at a time.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import current_app
from redis.exceptions import RedisError
from rq.job import Job
from sqlalchemy import func, or_, select
from sqlalchemy.orm import load_only

from . import rerun, waits
from .attempts import list_attempts, retry_summary
from .extensions import db
from .models import Deployment, OutputChunk, RunStatus, database_time, utcnow
from .redis_conn import get_queue

LIST_COLUMNS = (
    Deployment.id,
    Deployment.playbook,
    Deployment.target,
    Deployment.status,
    Deployment.reason,
    Deployment.reason_code,
    Deployment.trigger,
    Deployment.launched_by,
    Deployment.queued_at,
    Deployment.started_at,
    Deployment.finished_at,
    Deployment.heartbeat_at,
    Deployment.last_output_at,
    Deployment.worker_name,
    Deployment.hostname,
    Deployment.job_id,
    Deployment.attempt,
    Deployment.timeout,
    Deployment.check_mode,
    Deployment.rc,
    Deployment.limit_hosts,
    Deployment.retries,
    Deployment.max_attempts,
    Deployment.retry_at,
)
MAX_LIMIT = 200
# Chunks read per query when reading a run's output newest first.
TAIL_BATCH = 8
DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class FilterError(ValueError):
    def __init__(self, message, field, value):
        super().__init__(message)
        self.field = field
        self.value = value


@dataclass
class Page:
    rows: list
    next_before: int | None


def _parse_date(name, raw):
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise FilterError(
            f"Invalid {name} {raw!r}: use an ISO date such as 2026-01-31 or 2026-01-31T08:00.",
            name,
            raw,
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _parse_until(raw):
    """Return the exclusive upper bound for ``until``: a bare date includes its day."""
    value = _parse_date("until", raw)
    if DATE_ONLY.match(raw):
        value += timedelta(days=1)
    return value


def stuck_condition(now):
    """Return the SQL condition that matches the runs ``health`` calls stuck."""
    config = current_app.config
    beat_cutoff = now - timedelta(seconds=config["HEARTBEAT_GRACE"])
    start_cutoff = now - timedelta(seconds=config["STUCK_AFTER"])
    return (Deployment.status == RunStatus.RUNNING.value) & or_(
        Deployment.heartbeat_at < beat_cutoff, Deployment.started_at < start_cutoff
    )


def _status_branches(statuses, now):
    """Return one SQL condition per status asked for; "stuck" is its own branch."""
    expanded = set()
    for value in statuses:
        if value == "active":
            expanded |= {RunStatus.RUNNING.value, RunStatus.QUEUED.value}
        elif value != "stuck":
            expanded.add(value)
    branches = [Deployment.status == value for value in sorted(expanded)]
    if "stuck" in statuses and RunStatus.RUNNING.value not in expanded:
        branches.append(stuck_condition(now or database_time()))
    return branches


def query_page(args, limit_default=50, now=None):
    """Return one page of runs, newest first, filtered by ``args``.

    Filters: status, playbook, target, trigger (``manual``, ``schedule`` or an
    exact trigger), since and until, before and limit. Since and until are
    ISO dates or times on the queued time, and a bare ``until`` date includes
    that day. Before is a run id: the page starts below it. ``now`` is the
    time the stuck filter judges by.
    """
    query = select(Deployment).options(load_only(*LIST_COLUMNS))
    status = args.get("status")
    statuses = []
    if status:
        statuses = [s for s in status.split(",") if s]
        valid = {s.value for s in RunStatus} | {"stuck", "active"}
        for value in statuses:
            if value not in valid:
                raise FilterError(
                    f"Unknown status {value!r}: use one of {', '.join(sorted(valid))}.",
                    "status",
                    value,
                )
    if status and statuses:
        branches = _status_branches(statuses, now)
    else:
        branches = [None]
    if args.get("playbook"):
        query = query.where(Deployment.playbook == args["playbook"])
    if args.get("target"):
        query = query.where(Deployment.target == args["target"])
    trigger = args.get("trigger")
    if trigger == "schedule":
        query = query.where(Deployment.trigger.like("schedule:%"))
    elif trigger:
        query = query.where(Deployment.trigger == trigger)
    if args.get("since"):
        query = query.where(Deployment.queued_at >= _parse_date("since", args["since"]))
    if args.get("until"):
        query = query.where(Deployment.queued_at < _parse_until(args["until"]))
    before = args.get("before")
    if before:
        try:
            query = query.where(Deployment.id < int(before))
        except ValueError:
            raise FilterError(
                f"Invalid before {before!r}: give a run id.", "before", before
            ) from None
    try:
        limit = int(args.get("limit") or limit_default)
    except ValueError:
        raise FilterError(
            f"Invalid limit {args.get('limit')!r}: give a number from 1 to {MAX_LIMIT}.",
            "limit",
            args.get("limit"),
        ) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError(
            f"Invalid limit {limit}: give a number from 1 to {MAX_LIMIT}.",
            "limit",
            limit,
        )

    # One index-ordered query per status, merged here: a single query with
    # "status IN (...)" would scan the table in id order or sort every match.
    found = {}
    for branch in branches:
        branch_query = query if branch is None else query.where(branch)
        for run in db.session.scalars(
            branch_query.order_by(Deployment.id.desc()).limit(limit + 1)
        ):
            found[run.id] = run
    rows = sorted(found.values(), key=lambda run: run.id, reverse=True)[: limit + 1]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows=rows, next_before=rows[-1].id if more and rows else None)


def health(run, now=None):
    """Return the stuck and stalled flags of a run, with the reasons.

    Stuck: running with a heartbeat older than HEARTBEAT_GRACE or for longer
    than STUCK_AFTER. Stalled: running, alive, and silent for STALL_WARNING.
    Pass ``now`` from ``database_time()`` to judge heartbeats on the clock
    that wrote them.
    """
    config = current_app.config
    now = now or utcnow()
    result = {
        "stuck": False,
        "stalled": False,
        "note": None,
        "stall_note": None,
        "running_for": None,
        "running_for_text": None,
        "heartbeat_age": None,
    }
    if run.status != RunStatus.RUNNING.value or run.started_at is None:
        return result
    running_for = (now - run.started_at).total_seconds()
    result["running_for"] = running_for
    result["running_for_text"] = f"running for {format_duration(running_for)}"
    beat_age = (now - run.heartbeat_at).total_seconds() if run.heartbeat_at else None
    result["heartbeat_age"] = beat_age
    if beat_age is not None and beat_age > config["HEARTBEAT_GRACE"]:
        result["stuck"] = True
        result["note"] = (
            f"no heartbeat for {format_duration(beat_age)} "
            f"(grace {config['HEARTBEAT_GRACE']:g} s)"
        )
    elif running_for > config["STUCK_AFTER"]:
        result["stuck"] = True
        result["note"] = (
            f"running longer than STUCK_AFTER ({format_duration(config['STUCK_AFTER'])})"
        )
    quiet_since = run.last_output_at or run.started_at
    if (now - quiet_since).total_seconds() > config["STALL_WARNING"]:
        result["stalled"] = True
        silent = (now - quiet_since).total_seconds()
        result["stall_note"] = f"no output for {silent / 60:.0f} min"
    return result


def format_duration(seconds):
    """Return a short human reading of ``seconds``: 42 s, 12 min, 5.2 h."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def rq_state(run, connection=None):
    """Return the live RQ view of an active run, and any disagreement with SQL.

    Redis failures are reported, not raised: SQL remains the record.
    """
    return rq_states([run], connection).get(run.id)


def rq_states(runs, connection=None):
    """Return {run id: RQ view} for the active runs among ``runs``.

    Reads every job's status, and the queue position of queued ones, in one
    Redis pipeline, so a page of rows costs one round trip. A view contains the
    RQ status, the 1-based queue position of a queued job and a warning when
    RQ and SQL disagree, which the sweep repairs. Redis failures are
    reported in the views, not raised: SQL remains the record.
    """
    from .launch import redis_connection

    active = [run for run in runs if run.is_active and run.job_id]
    if not active:
        return {}
    try:
        connection = connection or redis_connection()
        queue_key = get_queue(current_app.config, connection).key
        pipeline = connection.pipeline(transaction=False)
        for run in active:
            pipeline.hget(Job.key_for(run.job_id), "status")
            if run.status == RunStatus.QUEUED.value:
                pipeline.lpos(queue_key, run.job_id)
        replies = iter(pipeline.execute())
    except RedisError as exc:
        warning = f"Redis unreachable: {exc}"
        return {
            run.id: {"status": None, "warning": warning, "position": None}
            for run in active
        }

    views = {}
    for run in active:
        raw = next(replies)
        position = next(replies) if run.status == RunStatus.QUEUED.value else None
        status = raw.decode() if isinstance(raw, bytes) else raw
        views[run.id] = _rq_view(run, status, position)
    return views


def _rq_view(run, status, position):
    view = {"status": status, "warning": None, "position": None}
    if status is None:
        view["warning"] = "RQ has no job for this run; the sweep will repair it"
    elif run.status == RunStatus.QUEUED.value:
        if status == "queued" and position is not None:
            view["position"] = position + 1
        elif status not in ("started", "deferred", "scheduled"):
            view["warning"] = f"RQ reports the job {status} while it is queued here"
    elif status != "started":
        view["warning"] = f"RQ reports the job {status} while it is running here"
    return view


def row_dict(run, now=None, rq=None):
    data = {column.key: getattr(run, column.key) for column in LIST_COLUMNS}
    for key in (
        "queued_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "last_output_at",
        "retry_at",
    ):
        data[key] = data[key].isoformat() if data[key] else None
    data["check"] = data.pop("check_mode")
    data["duration"] = run.duration
    data["health"] = health(run, now)
    data["rq"] = rq
    data["queue_reason"] = waits.queue_reason(run)
    data["retry"] = retry_summary(run, now)
    return data


def state_dict(run, now=None):
    """Return a run's record with its health, without asking Redis."""
    data = run.to_dict()
    data["health"] = health(run, now)
    return data


def detail_dict(run, now=None):
    data = state_dict(run, now)
    data["rq"] = rq_state(run)
    data["queue_reason"] = waits.queue_reason(run)
    data["host_results"] = rerun.host_results(run)
    data["retry"] = retry_summary(run)
    data["attempts"] = list_attempts(run.id)
    return data


def iter_output(run_id, after_id=0, attempt=None):
    """Yield the output text of a run in order, a batch of chunks at a time.

    With ``attempt``, only the output of that attempt of the run.
    """
    while chunks := output_after(run_id, after_id, attempt=attempt):
        for _, text in chunks:
            yield text
        after_id = chunks[-1][0]


def output_after(run_id, after_id, batch=200, attempt=None):
    """Return [(chunk id, text)] of a run's output newer than ``after_id``."""
    query = select(OutputChunk.id, OutputChunk.text).where(
        OutputChunk.deployment_id == run_id, OutputChunk.id > after_id
    )
    if attempt is not None:
        query = query.where(OutputChunk.attempt == attempt)
    return db.session.execute(query.order_by(OutputChunk.id).limit(batch)).all()


def last_chunk_id(run_id):
    """Return the id of the newest output chunk of a run, or 0."""
    return (
        db.session.scalar(
            select(func.max(OutputChunk.id)).where(OutputChunk.deployment_id == run_id)
        )
        or 0
    )


def output_tail(run_id, max_chars):
    """Return (text, truncated): at most the last ``max_chars`` of a run's output.

    Reads chunks newest first and stops once it has enough, so a run with a
    huge output costs about ``max_chars`` to show. A truncated tail starts
    at a line boundary.
    """
    parts = []
    size = 0
    truncated = False
    before = None
    while size < max_chars:
        query = select(OutputChunk.id, OutputChunk.text).where(
            OutputChunk.deployment_id == run_id
        )
        if before is not None:
            query = query.where(OutputChunk.id < before)
        batch = db.session.execute(
            query.order_by(OutputChunk.id.desc()).limit(TAIL_BATCH)
        ).all()
        for chunk_id, text in batch:
            if size >= max_chars:
                truncated = True
                break
            parts.append(text)
            size += len(text)
            before = chunk_id
        if truncated or len(batch) < TAIL_BATCH:
            break
    else:
        truncated = _has_output_before(run_id, before)

    text = "".join(reversed(parts))
    if len(text) > max_chars:
        truncated = True
        text = text[-max_chars:]
    if truncated and "\n" in text:
        text = text[text.index("\n") + 1 :]
    return text, truncated


def _has_output_before(run_id, chunk_id):
    return (
        chunk_id is not None
        and db.session.scalar(
            select(OutputChunk.id)
            .where(OutputChunk.deployment_id == run_id, OutputChunk.id < chunk_id)
            .limit(1)
        )
        is not None
    )
