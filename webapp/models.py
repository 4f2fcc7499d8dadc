"""SQL models: the run history is the record of every deployment.

Redis holds live job detail that expires; these rows are kept for good.
Times are stored as naive UTC and read back as aware UTC datetimes.
"""

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import FunctionElement

from .extensions import db


class RunStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    ABANDONED = "abandoned"

    @property
    def is_terminal(self):
        return self not in ACTIVE_STATUSES


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
TERMINAL_STATUSES = tuple(s for s in RunStatus if s not in ACTIVE_STATUSES)


def utcnow():
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as naive UTC and returned as an aware UTC datetime."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given; use an aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC)


class db_now(FunctionElement):
    """The database server's current UTC time, as a naive timestamp.

    Heartbeats are written and judged on this one clock, so a worker or a
    sweeper whose own wall clock is off never condemns a live run.
    """

    type = UTCDateTime()
    inherit_cache = True


@compiles(db_now, "sqlite")
def _db_now_sqlite(element, compiler, **kw):
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


@compiles(db_now, "postgresql")
def _db_now_postgresql(element, compiler, **kw):
    return "timezone('utc', clock_timestamp())"


def database_time():
    """Return the database server's current time (aware UTC)."""
    return db.session.scalar(select(db_now()))


class Deployment(db.Model):
    """One playbook run: its request, its state and its verdict."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    playbook: Mapped[str] = mapped_column(String(255))
    target: Mapped[str] = mapped_column(String(255))
    extra_vars: Mapped[dict] = mapped_column(JSON, default=dict)
    check_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    timeout: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(64), default="manual")
    launched_by: Mapped[str] = mapped_column(String(255), default="anonymous")
    relaunch_of: Mapped[int | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL")
    )

    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED.value)
    reason: Mapped[str | None] = mapped_column(Text)
    reason_code: Mapped[str | None] = mapped_column(String(64))
    # Who decided an automatic ending, with the evidence: see jobs.state.
    verdict: Mapped[dict | None] = mapped_column(JSON)

    # The execution currently allowed to write this row (a fencing token).
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    requeue_count: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str | None] = mapped_column(String(64))
    # Automatic retries (jobs.retries): how many were scheduled, the attempts
    # the playbook's policy allows, and when the pending retry is due. While
    # a retry waits, the run is queued with no RQ job. Once the retry is
    # enqueued, retry_at is the time it was enqueued.
    retries: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int | None] = mapped_column(Integer)
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_output_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    worker_name: Mapped[str | None] = mapped_column(String(255))
    hostname: Mapped[str | None] = mapped_column(String(255))
    horse_pid: Mapped[int | None] = mapped_column(Integer)
    horse_started: Mapped[float | None] = mapped_column(Float)
    pid: Mapped[int | None] = mapped_column(Integer)
    pgid: Mapped[int | None] = mapped_column(Integer)
    # Process start time in seconds since the epoch, as psutil reports it.
    pid_started: Mapped[float | None] = mapped_column(Float)
    artifact_dir: Mapped[str | None] = mapped_column(Text)

    rc: Mapped[int | None] = mapped_column(Integer)
    stats: Mapped[dict | None] = mapped_column(JSON)
    progress: Mapped[dict | None] = mapped_column(JSON)
    # Bytes of the artifact stdout file already copied into output_chunks.
    output_offset: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        Index("ix_deployments_status_id", "status", "id"),
        Index("ix_deployments_playbook_id", "playbook", "id"),
        Index("ix_deployments_target_id", "target", "id"),
        Index("ix_deployments_trigger_id", "trigger", "id"),
        Index("ix_deployments_queued_at", "queued_at"),
    )

    @property
    def run_status(self):
        return RunStatus(self.status)

    @property
    def is_active(self):
        return self.status in (RunStatus.QUEUED.value, RunStatus.RUNNING.value)

    @property
    def duration(self):
        """Seconds between start and finish (or now, while running)."""
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()

    def to_dict(self):
        return {
            "id": self.id,
            "playbook": self.playbook,
            "target": self.target,
            "extra_vars": self.extra_vars,
            "check": self.check_mode,
            "timeout": self.timeout,
            "trigger": self.trigger,
            "launched_by": self.launched_by,
            "relaunch_of": self.relaunch_of,
            "status": self.status,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "verdict": self.verdict,
            "attempt": self.attempt,
            "job_id": self.job_id,
            "retries": self.retries,
            "max_attempts": self.max_attempts,
            "retry_at": _iso(self.retry_at),
            "queued_at": _iso(self.queued_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "heartbeat_at": _iso(self.heartbeat_at),
            "last_output_at": _iso(self.last_output_at),
            "duration": self.duration,
            "worker_name": self.worker_name,
            "hostname": self.hostname,
            "pid": self.pid,
            "pgid": self.pgid,
            "rc": self.rc,
            "stats": self.stats,
            "progress": self.progress,
        }


class OutputChunk(db.Model):
    """A piece of a run's output, in the order Ansible printed it."""

    __tablename__ = "output_chunks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE")
    )
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The run's attempt that printed this chunk (None in rows written before
    # attempts were recorded).
    attempt: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_output_chunks_run_id", "deployment_id", "id"),)


def _iso(value):
    return value.isoformat() if value else None


class Attempt(db.Model):
    """One ended execution of a run, kept when the run is retried or ends.

    ``number`` is the run's attempt (the fencing token of jobs.state) that
    ended, so it matches ``OutputChunk.attempt``.
    """

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    reason_code: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[dict | None] = mapped_column(JSON)
    worker_name: Mapped[str | None] = mapped_column(String(255))
    hostname: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rc: Mapped[int | None] = mapped_column(Integer)
    stats: Mapped[dict | None] = mapped_column(JSON)
    # What followed this attempt: a retry and when, or why there was none.
    retry_note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_attempts_run_id", "deployment_id", "number"),)

    def to_dict(self):
        started, finished = self.started_at, self.finished_at
        return {
            "number": self.number,
            "status": self.status,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "verdict": self.verdict,
            "worker_name": self.worker_name,
            "hostname": self.hostname,
            "started_at": _iso(started),
            "finished_at": _iso(finished),
            "duration": (finished - started).total_seconds()
            if started and finished
            else None,
            "rc": self.rc,
            "stats": self.stats,
            "retry_note": self.retry_note,
        }


__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "Attempt",
    "Deployment",
    "OutputChunk",
    "RunStatus",
    "database_time",
    "db_now",
    "utcnow",
]
