"""Configuration: the one reader of ``os.environ`` for web, worker and scheduler.

Every setting has a default that works offline on a fresh clone: SQLite under
``instance/`` and the embedded Redis on a Unix socket under ``instance/``.
"""

import os
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


def _secret_key(instance_dir):
    """Return the key stored under ``instance/``, creating it on first use."""
    path = instance_dir / "secret_key"
    if not path.exists():
        instance_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


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
        "STUCK_AFTER": _number(env, "STUCK_AFTER", 7200.0),
        # Queued rows younger than this are never treated as lost by a sweep:
        # the web process may still be enqueueing their job.
        "REQUEUE_AFTER": _number(env, "REQUEUE_AFTER", 10.0),
        "FAILURE_ALERT_THRESHOLD": _number(env, "FAILURE_ALERT_THRESHOLD", 5, int),
        "OUTPUT_FLUSH_INTERVAL": _number(env, "OUTPUT_FLUSH_INTERVAL", 0.25),
        # Retry policy of playbooks whose header sets none: the number of
        # attempts (1 means no retries) and the seconds between attempts.
        "RETRY_ATTEMPTS": _number(env, "RETRY_ATTEMPTS", 1, int),
        "RETRY_BACKOFF": _number(env, "RETRY_BACKOFF", 30.0),
    }
