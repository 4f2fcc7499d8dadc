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
    # Host names that narrow ``target`` (a partial re-run), passed to Ansible
    # as ``--limit``; None runs on every host of the target.
    limit_hosts: Mapped[list | None] = mapped_column(JSON)

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
            "limit_hosts": self.limit_hosts,
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

    __table_args__ = (Index("ix_output_chunks_run_id", "deployment_id", "id"),)


class HostLease(db.Model):
    """A host taken by one run, so that no two runs change it at the same time.

    The host name is the primary key: a second run cannot insert the same
    host until the holder's row is deleted, whichever worker tries.
    """

    __tablename__ = "host_leases"

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Setting(db.Model):
    """A service-wide switch kept in SQL so that it outlives a Redis restart."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(255))


def _iso(value):
    return value.isoformat() if value else None


__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "Deployment",
    "HostLease",
    "OutputChunk",
    "RunStatus",
    "Setting",
    "database_time",
    "db_now",
    "utcnow",
]
