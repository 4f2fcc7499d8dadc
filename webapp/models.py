"""SQL models: the run history is the record of every deployment.

Redis contains live job detail that expires; these rows are kept for good.
Times are stored as naive UTC and read back as aware UTC datetimes.
"""

import enum
import hashlib
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
    UniqueConstraint,
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
    # Names of extra vars whose values are masked in ``extra_vars``: the real
    # values live in Redis until the job ends (see jobs.secret_store).
    secret_vars: Mapped[list | None] = mapped_column(JSON)
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
    # Host names that narrow ``target`` (a partial re-run), passed to Ansible
    # as ``--limit``; None runs on every host of the target.
    limit_hosts: Mapped[list | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_deployments_status_id", "status", "id"),
        Index("ix_deployments_playbook_id", "playbook", "id"),
        Index("ix_deployments_target_id", "target", "id"),
        Index("ix_deployments_trigger_id", "trigger", "id"),
        Index("ix_deployments_queued_at", "queued_at"),
        # Covering indexes for the dashboard's aggregates (webapp.dashboard):
        # runs per hour and day, by status and by OS family of the target,
        # and durations and failures by finish time.
        Index(
            "ix_deployments_queued_at_stats",
            "queued_at",
            "status",
            "target",
            "playbook",
        ),
        Index(
            "ix_deployments_finished_at_stats",
            "finished_at",
            "status",
            "playbook",
            "started_at",
        ),
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
            "secret_vars": self.secret_vars or [],
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


class ScheduleOverlap(str, enum.Enum):
    """The policy for an occurrence that comes due while the previous run is active."""

    SKIP = "skip"
    ALLOW = "allow"


class OccurrenceOutcome(str, enum.Enum):
    STARTED = "started"
    SKIPPED = "skipped"
    MISSED = "missed"
    FAILED = "failed"


class Schedule(db.Model):
    """A recurring run: a playbook on a target at the times of a cron expression.

    SQL is the record; the scheduler loads these rows into rq-scheduler.
    """

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    playbook: Mapped[str] = mapped_column(String(255))
    target: Mapped[str] = mapped_column(String(255))
    extra_vars: Mapped[dict] = mapped_column(JSON, default=dict)
    cron: Mapped[str] = mapped_column(String(255))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # Seconds; None uses the playbook's timeout or DEFAULT_JOB_TIMEOUT.
    timeout: Mapped[int | None] = mapped_column(Integer)
    overlap: Mapped[str] = mapped_column(String(16), default=ScheduleOverlap.SKIP.value)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # Seconds: after downtime the latest missed occurrence still runs if it is
    # at most this late.
    missed_grace: Mapped[int] = mapped_column(Integer, default=3600)
    # Bumped on every change, so the scheduler can tell a stale rq-scheduler job.
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Occurrences at or before this time are never run nor recorded as missed:
    # set on creation, on resume and when the cron expression or zone changes.
    active_since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(255), default="anonymous")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def trigger(self):
        """The ``trigger`` value of the runs this schedule creates."""
        return f"schedule:{self.id}"

    def to_dict(self):
        return {
            "id": self.id,
            "name": self.name,
            "playbook": self.playbook,
            "target": self.target,
            "extra_vars": self.extra_vars,
            "cron": self.cron,
            "timezone": self.timezone,
            "timeout": self.timeout,
            "overlap": self.overlap,
            "paused": self.paused,
            "missed_grace": self.missed_grace,
            "version": self.version,
            "active_since": _iso(self.active_since),
            "created_by": self.created_by,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


class ScheduleOccurrence(db.Model):
    """One due time of a schedule and what became of it.

    The unique (schedule, time) pair is what makes an occurrence fire once,
    however many scheduler processes see it come due.
    """

    __tablename__ = "schedule_occurrences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(
        ForeignKey("schedules.id", ondelete="CASCADE")
    )
    occurs_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    deployment_id: Mapped[int | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL")
    )
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    recorded_by: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("schedule_id", "occurs_at", name="uq_schedule_occurrence"),
    )

    def to_dict(self):
        return {
            "id": self.id,
            "schedule_id": self.schedule_id,
            "occurs_at": _iso(self.occurs_at),
            "outcome": self.outcome,
            "reason": self.reason,
            "deployment_id": self.deployment_id,
            "recorded_at": _iso(self.recorded_at),
            "recorded_by": self.recorded_by,
        }


class NotificationDelivery(db.Model):
    """One notification sent (or being sent) to one channel, with its outcome.

    Rows are written by jobs.notify: ``pending`` when enqueued, then ``sent``
    or, once every retry has failed, ``failed`` with the last error.
    """

    __tablename__ = "notification_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL")
    )
    # run_failed, run_timeout, run_abandoned, run_stuck or failure_threshold.
    event: Mapped[str] = mapped_column(String(32))
    # webhook or email.
    channel: Mapped[str] = mapped_column(String(16))
    destination: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_notification_deliveries_event_run", "event", "deployment_id"),
        Index("ix_notification_deliveries_created_at", "created_at"),
    )

    def to_dict(self):
        return {
            "id": self.id,
            "run_id": self.deployment_id,
            "event": self.event,
            "channel": self.channel,
            "destination": self.destination,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


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


class Role(str, enum.Enum):
    """A user's level of rights: each role includes the rights of the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self):
        return list(Role).index(self)


class User(db.Model):
    """A person who signs in with a password, or owns API tokens."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.VIEWER.value)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Flask-Login's user interface.
    @property
    def is_authenticated(self):
        return True

    @property
    def is_active(self):
        return not self.disabled

    @property
    def is_anonymous(self):
        return False

    def get_id(self):
        # Stored in the session: a new password ends every earlier session.
        return f"{self.id}:{self.password_fingerprint}"

    @property
    def password_fingerprint(self):
        digest = hashlib.sha256((self.password_hash or "").encode())
        return digest.hexdigest()[:16]

    def has_role(self, role):
        return Role(self.role).rank >= Role(role).rank

    def to_dict(self):
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "disabled": self.disabled,
            "created_at": _iso(self.created_at),
            "last_login_at": _iso(self.last_login_at),
        }


class ApiToken(db.Model):
    """A bearer token for the JSON API; only its SHA-256 digest is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, shown in listings to tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(db.Model):
    """One security-relevant action: who did what to which target, from where."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    address: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_audit_events_action_at", "action", "at"),
        Index("ix_audit_events_at", "at"),
    )

    def to_dict(self):
        return {
            "id": self.id,
            "at": _iso(self.at),
            "actor": self.actor,
            "address": self.address,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
        }


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
    "NotificationDelivery",
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "ApiToken",
    "AuditEvent",
    "Attempt",
    "Deployment",
    "OccurrenceOutcome",
    "HostLease",
    "OutputChunk",
    "Role",
    "RunStatus",
    "User",
    "Schedule",
    "ScheduleOccurrence",
    "ScheduleOverlap",
    "Setting",
    "database_time",
    "db_now",
    "utcnow",
]
