"""Launching and canceling runs: the one code path behind the forms and the JSON API."""

import json
import logging

import yaml
from flask import current_app
from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from jobs import queueing, state

from .catalog import CatalogError, find_playbook
from .extensions import db
from .models import Deployment, RunStatus
from .redis_conn import connect, get_queue

logger = logging.getLogger(__name__)

MAX_EXTRA_VARS_BYTES = 64 * 1024


class LaunchError(ValueError):
    """A launch request is invalid; ``field`` and ``value`` name the culprit."""

    def __init__(self, message, field=None, value=None, status=400):
        super().__init__(message)
        self.field = field
        self.value = value
        self.status = status


def redis_connection():
    connection = current_app.extensions.get("redis")
    if connection is None:
        connection = connect(current_app.config["REDIS_URL"])
        current_app.extensions["redis"] = connection
    return connection


def queue():
    return get_queue(current_app.config, redis_connection())


def parse_extra_vars(raw):
    """Return extra vars as a dict from a dict, or YAML or JSON text.

    Raises LaunchError when the text does not parse or is not a mapping.
    """
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        text = json.dumps(raw)
        value = raw
    elif isinstance(raw, str):
        text = raw
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise LaunchError(
                f"Invalid extra vars: not valid YAML or JSON ({str(exc).splitlines()[0]}). "
                'Give a mapping such as {"version": "1.2"} or "version: 1.2".',
                "extra_vars",
                raw,
            ) from exc
        if value is None:
            return {}
    else:
        raise LaunchError(
            f"Invalid extra vars {raw!r}: give a JSON object or YAML mapping.",
            "extra_vars",
            raw,
        )
    if len(text.encode()) > MAX_EXTRA_VARS_BYTES:
        raise LaunchError(
            f"Extra vars are {len(text.encode())} bytes; the limit is {MAX_EXTRA_VARS_BYTES}.",
            "extra_vars",
            text[:80],
        )
    if not isinstance(value, dict):
        raise LaunchError(
            f"Invalid extra vars {raw!r}: expected a mapping of names to values, "
            f"got a {type(value).__name__}.",
            "extra_vars",
            raw,
        )
    if not all(isinstance(key, str) for key in value):
        raise LaunchError(
            "Invalid extra vars: every name must be a string.", "extra_vars", raw
        )
    return value


def parse_timeout(raw, default):
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise LaunchError(
            f"Invalid timeout {raw!r}: give a positive number of seconds.",
            "timeout",
            raw,
        )
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise LaunchError(
            f"Invalid timeout {raw!r}: give a positive number of seconds.",
            "timeout",
            raw,
        ) from None
    if not value > 0 or value != value or value == float("inf"):
        raise LaunchError(
            f"Invalid timeout {raw!r}: give a positive number of seconds.",
            "timeout",
            raw,
        )
    return max(1, int(round(value)))


def parse_check(raw):
    if raw in (None, "", False, "false", "0", "off"):
        return False
    if raw in (True, "true", "1", "on", "yes"):
        return True
    raise LaunchError(f"Invalid check {raw!r}: give true or false.", "check", raw)


def launch(
    playbook,
    target,
    extra_vars=None,
    check=False,
    timeout=None,
    *,
    launched_by="anonymous",
    trigger="manual",
    relaunch_of=None,
):
    """Validate a request, create its queued row and enqueue its job.

    Returns the new Deployment. Raises LaunchError for invalid input (nothing
    is written) and for an unreachable Redis (the row is removed again).
    """
    config = current_app.config
    try:
        entry = find_playbook(config["PLAYBOOK_DIR"], playbook)
        current_app.extensions["inventory"].validate_target(target)
    except CatalogError as exc:
        raise LaunchError(str(exc), exc.field, exc.value) from exc
    extra_vars = parse_extra_vars(extra_vars)
    default_timeout = entry.timeout or config["DEFAULT_JOB_TIMEOUT"]
    timeout = parse_timeout(timeout, default_timeout)
    check = parse_check(check)

    run = Deployment(
        playbook=entry.path,
        target=target,
        extra_vars=extra_vars,
        check_mode=check,
        timeout=timeout,
        launched_by=launched_by,
        trigger=trigger,
        relaunch_of=relaunch_of,
        status=RunStatus.QUEUED.value,
        attempt=1,
    )
    db.session.add(run)
    db.session.commit()
    run.job_id = queueing.job_id(run.id, run.attempt)
    db.session.commit()
    try:
        queueing.enqueue_run(queue(), run.id, run.attempt, timeout)
    except RedisError as exc:
        db.session.delete(run)
        db.session.commit()
        logger.error(
            "launch of %s on %s failed: Redis is unreachable: %s", playbook, target, exc
        )
        raise LaunchError(
            f"Redis at {config['REDIS_URL']} is unreachable ({exc}), so the run was not "
            "created. Start Redis (make run starts the embedded one) or fix REDIS_URL, "
            "then launch again.",
            status=503,
        ) from exc
    logger.info(
        "run %s: queued %s on %s by %s", run.id, run.playbook, run.target, launched_by
    )
    return run


def relaunch(run, *, launched_by):
    return launch(
        run.playbook,
        run.target,
        run.extra_vars,
        run.check_mode,
        run.timeout,
        launched_by=launched_by,
        trigger=run.trigger,
        relaunch_of=run.id,
    )


def cancel(run, *, requested_by):
    """Cancel a queued or running run; return True if this request ended it.

    The row is ended first, so the worker's own handlers find it canceled;
    then the RQ job is canceled (queued) or stopped (running), which kills the
    work horse and with it the playbook.
    """
    reason = f"canceled by {requested_by}"
    was = run.status
    if not state.finish(
        run.id,
        RunStatus.CANCELED,
        reason,
        decided_by="operator",
        reason_code="canceled",
        evidence={"requested_by": requested_by, "status_before": was},
        explain=True,
    ):
        return False
    if not run.job_id:
        # A retry waiting for its time has no RQ job yet (jobs.retries).
        return True
    connection = redis_connection()
    try:
        if was == RunStatus.QUEUED.value:
            Job.fetch(run.job_id, connection=connection).cancel()
        else:
            send_stop_job_command(connection, run.job_id)
    except (NoSuchJobError, InvalidJobOperation) as exc:
        logger.info("run %s: RQ job %s not stopped: %s", run.id, run.job_id, exc)
    except RedisError:
        # The worker's monitor stops the playbook at its next heartbeat.
        logger.exception(
            "run %s: could not reach Redis to stop job %s", run.id, run.job_id
        )
    return True
