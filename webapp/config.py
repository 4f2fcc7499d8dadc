"""Configuration: the one reader of ``os.environ`` for web, worker and scheduler.

Every setting has a default that works offline on a fresh clone: SQLite under
``instance/`` and the embedded Redis on a Unix socket under ``instance/``.
"""

import os
import re
import secrets
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE_DIR = ROOT / "instance"


class ConfigError(ValueError):
    """A configuration value is missing or invalid."""


def _number(env, name, default, kind=float, minimum=0):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a valid number. Set it to a number of "
            f"seconds, for example {name}={default}."
        ) from None
    if value <= minimum:
        raise ConfigError(f"{name}={raw!r} must be greater than {minimum}.")
    return value


def _flag(env, name, default=False):
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a valid flag. Set it to true or false.")


def _pattern(env, name, default):
    raw = env.get(name) or default
    try:
        return re.compile(raw, re.IGNORECASE).pattern
    except re.error as exc:
        raise ConfigError(
            f"{name}={raw!r} is not a valid regular expression ({exc})."
        ) from None


def _secret_key(instance_dir):
    """Return the key stored under ``instance/``, creating it on first use."""
    path = instance_dir / "secret_key"
    if not path.exists():
        instance_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(raw, name="--older-than"):
    """Return the seconds in an age such as ``90d``, ``12h``, ``30m`` or ``45s``.

    A bare number is days. Raises ConfigError naming ``name`` when invalid.
    """
    text = str(raw).strip().lower()
    unit = text[-1:] if text[-1:] in AGE_UNITS else "d"
    number = text[:-1] if text[-1:] in AGE_UNITS else text
    try:
        value = float(number)
    except ValueError:
        value = -1
    if value <= 0:
        raise ConfigError(
            f"{name}={raw!r} is not a valid age. Give a positive number with a "
            "unit s, m, h, d or w, for example 90d."
        )
    return value * AGE_UNITS[unit]


def _list(env, name):
    return [item.strip() for item in (env.get(name) or "").split(",") if item.strip()]


def _retry_intervals(env):
    raw = env.get("NOTIFY_RETRY_INTERVALS") or "10,60,300"
    try:
        intervals = [int(item) for item in raw.split(",") if item.strip()]
    except ValueError:
        intervals = []
    if not intervals or any(i < 0 for i in intervals):
        raise ConfigError(
            f"NOTIFY_RETRY_INTERVALS={raw!r} is invalid. Give whole seconds "
            "between delivery attempts, separated by commas, for example 10,60,300."
        )
    return intervals


def _notification_settings(env):
    """Return the settings of webhook and email notifications (see jobs.notify)."""
    webhook_format = env.get("NOTIFY_WEBHOOK_FORMAT") or "json"
    if webhook_format not in ("json", "slack"):
        raise ConfigError(
            f"NOTIFY_WEBHOOK_FORMAT={webhook_format!r} is invalid. Use json or slack."
        )
    routes = env.get("NOTIFY_ROUTES") or ""
    if routes and not Path(routes).is_file():
        raise ConfigError(
            f"NOTIFY_ROUTES={routes!r} is not a file. Point it at a YAML list of "
            "notification routes, or leave it unset."
        )
    return {
        "NOTIFY_WEBHOOK_URL": env.get("NOTIFY_WEBHOOK_URL") or "",
        "NOTIFY_WEBHOOK_FORMAT": webhook_format,
        "NOTIFY_EMAIL_TO": _list(env, "NOTIFY_EMAIL_TO"),
        # Playbooks the global webhook and email apply to; empty means all.
        "NOTIFY_PLAYBOOKS": _list(env, "NOTIFY_PLAYBOOKS"),
        "NOTIFY_ROUTES": routes,
        "NOTIFY_RETRY_INTERVALS": _retry_intervals(env),
        "SMTP_HOST": env.get("SMTP_HOST") or "",
        "SMTP_PORT": _number(env, "SMTP_PORT", 25, int),
        "SMTP_FROM": env.get("SMTP_FROM") or f"shepherd@{socket.gethostname()}",
        "SMTP_USERNAME": env.get("SMTP_USERNAME") or "",
        "SMTP_PASSWORD": env.get("SMTP_PASSWORD") or "",
        "SMTP_STARTTLS": (env.get("SMTP_STARTTLS") or "").lower()
        in ("1", "true", "yes"),
        "SMTP_TIMEOUT": _number(env, "SMTP_TIMEOUT", 10.0),
    }


def _retention_settings(env):
    """Return the settings of the scheduled prune and of artifact folder cleanup."""
    older_than = env.get("PRUNE_OLDER_THAN") or "90d"
    return {
        # Output and artifacts of runs that ended longer ago than this are
        # deleted once a PRUNE_INTERVAL; "off" disables the scheduled prune.
        "PRUNE_OLDER_THAN": None
        if older_than == "off"
        else parse_age(older_than, "PRUNE_OLDER_THAN"),
        "PRUNE_INTERVAL": _number(env, "PRUNE_INTERVAL", 86400.0),
        # The artifact folder of a run is deleted this many seconds after the
        # run ended: its output is in SQL by then.
        "ARTIFACT_RETENTION": _number(env, "ARTIFACT_RETENTION", 3600.0),
    }


def load(env=None):
    """Build the configuration mapping from environment variables.

    Raises ConfigError naming the variable when a value is invalid.
    """
    env = os.environ if env is None else env
    instance_dir = Path(env.get("INSTANCE_DIR") or DEFAULT_INSTANCE_DIR)
    instance_dir.mkdir(parents=True, exist_ok=True)

    database_url = env.get("DATABASE_URL") or f"sqlite:///{instance_dir}/shepherd.db"
    if database_url.startswith("postgres://"):
        database_url = "postgresql://" + database_url[len("postgres://") :]
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]

    redis_url = env.get("REDIS_URL") or f"unix://{instance_dir}/redis.sock"

    playbook_dir = Path(env.get("PLAYBOOK_DIR") or ROOT / "playbooks").resolve()
    inventory = Path(env.get("INVENTORY") or ROOT / "inventory" / "hosts.yml").resolve()
    if not playbook_dir.is_dir():
        raise ConfigError(
            f"PLAYBOOK_DIR={str(playbook_dir)!r} is not a directory. "
            "Point it at the folder that holds your playbooks."
        )
    if not inventory.exists():
        raise ConfigError(
            f"INVENTORY={str(inventory)!r} does not exist. "
            "Point it at an Ansible inventory file or folder."
        )

    return {
        "SECRET_KEY": env.get("SECRET_KEY") or _secret_key(instance_dir),
        "INSTANCE_DIR": str(instance_dir),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        "QUEUE_NAME": env.get("QUEUE_NAME") or "shepherd",
        "PLAYBOOK_DIR": str(playbook_dir),
        "INVENTORY": str(inventory),
        "ARTIFACT_DIR": env.get("ARTIFACT_DIR") or str(instance_dir / "artifacts"),
        # The identity of this machine in run records. Process control only
        # ever acts on runs whose host matches it.
        "HOSTNAME": env.get("SHEPHERD_HOSTNAME") or socket.gethostname(),
        # The interpreter that Ansible uses for localhost: the one running us.
        "PYTHON": env.get("ANSIBLE_LOCAL_PYTHON") or sys.executable,
        "DEFAULT_JOB_TIMEOUT": _number(env, "DEFAULT_JOB_TIMEOUT", 600, int),
        "HEARTBEAT_INTERVAL": _number(env, "HEARTBEAT_INTERVAL", 5.0),
        "HEARTBEAT_GRACE": _number(env, "HEARTBEAT_GRACE", 15.0),
        "SWEEP_INTERVAL": _number(env, "SWEEP_INTERVAL", 5.0),
        "STALL_WARNING": _number(env, "STALL_WARNING", 600.0),
        # RQ's worker_ttl, in seconds (RQ's own default is 420). A worker's
        # key in Redis expires WORKER_TTL + 60 s after its last heartbeat, so
        # a worker killed with SIGKILL leaves `rq info` and /healthz then. An
        # idle worker renews the key every WORKER_TTL - 15 s.
        "WORKER_TTL": _number(env, "WORKER_TTL", 60, int, minimum=15),
        "STUCK_AFTER": _number(env, "STUCK_AFTER", 7200.0),
        # Queued rows younger than this are never treated as lost by a sweep:
        # the web process may still be enqueueing their job.
        "REQUEUE_AFTER": _number(env, "REQUEUE_AFTER", 10.0),
        "FAILURE_ALERT_THRESHOLD": _number(env, "FAILURE_ALERT_THRESHOLD", 5, int),
        "OUTPUT_FLUSH_INTERVAL": _number(env, "OUTPUT_FLUSH_INTERVAL", 0.25),
        # Sign-in and sessions (see webapp.auth and webapp.security).
        "SESSION_COOKIE_SECURE": _flag(env, "SESSION_COOKIE_SECURE"),
        "SESSION_LIFETIME_HOURS": _number(env, "SESSION_LIFETIME_HOURS", 12.0),
        "LOGIN_FAILURE_WINDOW": _number(env, "LOGIN_FAILURE_WINDOW", 900.0),
        "LOGIN_MAX_FAILURES": _number(env, "LOGIN_MAX_FAILURES", 5, int),
        "LOGIN_MAX_FAILURES_PER_ADDRESS": _number(
            env, "LOGIN_MAX_FAILURES_PER_ADDRESS", 20, int
        ),
        # Number of reverse proxies in front of gunicorn whose X-Forwarded-For
        # and X-Forwarded-Proto headers are trusted; 0 trusts none.
        "PROXY_COUNT": _number(env, "PROXY_COUNT", 0, int, minimum=-1),
        # Extra vars whose names match this (case-insensitive) are secret.
        "SECRET_VAR_PATTERN": _pattern(
            env, "SECRET_VAR_PATTERN", r"pass|secret|token|key|credential"
        ),
        # Accept a sixth cron field with seconds in schedules (for tests).
        "SCHEDULE_SECONDS": env.get("SCHEDULE_SECONDS", "") in ("1", "true", "yes"),
        **_notification_settings(env),
        **_retention_settings(env),
        # Seconds a run waits before trying again for a leased host or while
        # the service drains.
        "LEASE_RETRY_INTERVAL": _number(env, "LEASE_RETRY_INTERVAL", 2.0),
        "DRAIN_RETRY_INTERVAL": _number(env, "DRAIN_RETRY_INTERVAL", 5.0),
        # While draining, reject launches with 503 instead of queueing them.
        "DRAIN_REJECT": _flag(env, "DRAIN_REJECT"),
        # Retry policy of playbooks whose header sets none: the number of
        # attempts (1 means no retries) and the seconds between attempts.
        "RETRY_ATTEMPTS": _number(env, "RETRY_ATTEMPTS", 1, int),
        "RETRY_BACKOFF": _number(env, "RETRY_BACKOFF", 30.0),
    }
