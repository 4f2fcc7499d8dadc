"""Reading the run history: keyset pages of SQL rows joined with live RQ state.

List queries never load output text; output is read in chunk order only for
one run at a time.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from flask import current_app
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import func, select
from sqlalchemy.orm import load_only

from .attempts import list_attempts, retry_summary
from .extensions import db
from .models import Deployment, OutputChunk, RunStatus, utcnow

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
    Deployment.retries,
    Deployment.max_attempts,
    Deployment.retry_at,
)
MAX_LIMIT = 200


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


def query_page(args, limit_default=50):
    """Return one page of runs, newest first, filtered by ``args``.

    Filters: status, playbook, target, trigger (``manual``, ``schedule`` or an
    exact trigger), since and until (ISO dates, on the queued time), before (a
    run id: the page starts below it), limit.
    """
    query = select(Deployment).options(load_only(*LIST_COLUMNS))
    status = args.get("status")
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
        expanded = set()
        for value in statuses:
            if value in ("stuck", "active"):
                expanded |= (
                    {RunStatus.RUNNING.value, RunStatus.QUEUED.value}
                    if value == "active"
                    else {RunStatus.RUNNING.value}
                )
            else:
                expanded.add(value)
        query = query.where(Deployment.status.in_(sorted(expanded)))
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
        query = query.where(Deployment.queued_at < _parse_date("until", args["until"]))
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

    rows = db.session.scalars(
        query.order_by(Deployment.id.desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    if status and "stuck" in status.split(","):
        rows = [r for r in rows if health(r)["stuck"]]
    return Page(rows=rows, next_before=rows[-1].id if more and rows else None)


def health(run, now=None):
    """Return the stuck and stalled flags of a run, with the reasons.

    Stuck: running with a heartbeat older than HEARTBEAT_GRACE or for longer
    than STUCK_AFTER. Stalled: running, alive, and silent for STALL_WARNING.
    """
    config = current_app.config
    now = now or utcnow()
    result = {"stuck": False, "stalled": False, "note": None, "running_for": None}
    if run.status != RunStatus.RUNNING.value or run.started_at is None:
        return result
    running_for = (now - run.started_at).total_seconds()
    result["running_for"] = running_for
    beat_age = (now - run.heartbeat_at).total_seconds() if run.heartbeat_at else None
    if beat_age is not None and beat_age > config["HEARTBEAT_GRACE"]:
        result["stuck"] = True
        result["note"] = f"no heartbeat for {beat_age:.0f} s"
    elif running_for > config["STUCK_AFTER"]:
        result["stuck"] = True
        result["note"] = f"running for {running_for / 3600:.1f} h"
    quiet_since = run.last_output_at or run.started_at
    if (now - quiet_since).total_seconds() > config["STALL_WARNING"]:
        result["stalled"] = True
        silent = (now - quiet_since).total_seconds()
        result["stall_note"] = f"no output for {silent / 60:.0f} min"
    return result


def rq_state(run, connection=None):
    """Return the live RQ view of an active run, and any disagreement with SQL.

    Redis failures are reported, not raised: SQL remains the record.
    """
    if not run.is_active or not run.job_id:
        return None
    from .launch import queue, redis_connection

    connection = connection or redis_connection()
    try:
        job = Job.fetch(run.job_id, connection=connection)
        status = job.get_status(refresh=False)
    except NoSuchJobError:
        status = None
    except RedisError as exc:
        return {"status": None, "warning": f"Redis unreachable: {exc}"}
    view = {"status": status.value if status else None, "warning": None}
    if status is None:
        view["warning"] = "RQ has no job for this run; the sweep will repair it"
    elif run.status == RunStatus.QUEUED.value:
        if status.value == "queued":
            position = queue().get_job_position(run.job_id)
            view["position"] = None if position is None else position + 1
        elif status.value not in ("started", "deferred", "scheduled"):
            view["warning"] = (
                f"RQ reports the job {status.value} while it is queued here"
            )
    elif status.value != "started":
        view["warning"] = f"RQ reports the job {status.value} while it is running here"
    return view


def row_dict(run, now=None):
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
    data["retry"] = retry_summary(run, now)
    return data


def detail_dict(run):
    data = run.to_dict()
    data["health"] = health(run)
    data["rq"] = rq_state(run)
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
