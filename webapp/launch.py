"""Launching and canceling runs: the one code path behind the forms and the JSON API."""

import json
import logging

import yaml
from flask import current_app
from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from jobs import drain, queueing, secret_store, state

from . import audit, rerun
from . import extra_vars as extra_var_checks
from .catalog import NAME_PATTERN, CatalogError, find_playbook
from .extensions import db
from .models import Deployment, RunStatus
from .policy import can
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
    launched_by=None,
    trigger="manual",
    relaunch_of=None,
    privileged_vars=None,
    limit_hosts=None,
):
    """Validate a request, create its queued row, enqueue its job and audit it.

    ``launched_by`` defaults to the signed-in user. ``privileged_vars``
    allows connection and privilege extra vars and templates; by default
    only a signed-in admin may send them. Secret extra vars are stored
    masked and handed to the job through Redis.

    ``limit_hosts`` narrows the target to those inventory hosts. Returns the
    new Deployment. Raises LaunchError for invalid input (nothing is
    written), while draining with DRAIN_REJECT set, and for an unreachable
    Redis (the row is removed again).
    """
    if launched_by is None:
        launched_by = audit.current_actor()
    if privileged_vars is None:
        privileged_vars = audit.current_actor() != "system" and can("override_vars")
    config = current_app.config
    inventory = current_app.extensions["inventory"]
    try:
        entry = find_playbook(config["PLAYBOOK_DIR"], playbook)
        inventory.validate_target(target)
        limit_hosts = validate_limit(inventory, target, limit_hosts)
    except CatalogError as exc:
        raise LaunchError(str(exc), exc.field, exc.value) from exc
    if config["DRAIN_REJECT"] and drain.is_draining():
        raise LaunchError(
            "Shepherd is draining before a restart and DRAIN_REJECT is set, so new "
            "runs are rejected. Launch again once drain mode is off.",
            "drain",
            "on",
            status=503,
        )
    extra_vars = parse_extra_vars(extra_vars)
    try:
        extra_var_checks.check(extra_vars, privileged_allowed=privileged_vars)
    except extra_var_checks.ExtraVarsError as exc:
        raise LaunchError(str(exc), "extra_vars", exc.value, exc.status) from exc
    secret_names = extra_var_checks.secret_names(extra_vars, entry.meta)
    extra_vars, secret_values = extra_var_checks.split_secrets(extra_vars, secret_names)
    default_timeout = entry.timeout or config["DEFAULT_JOB_TIMEOUT"]
    timeout = parse_timeout(timeout, default_timeout)
    check = parse_check(check)

    run = Deployment(
        playbook=entry.path,
        target=target,
        extra_vars=extra_vars,
        secret_vars=secret_names or None,
        check_mode=check,
        timeout=timeout,
        launched_by=launched_by,
        trigger=trigger,
        relaunch_of=relaunch_of,
        limit_hosts=limit_hosts,
        status=RunStatus.QUEUED.value,
        attempt=1,
    )
    db.session.add(run)
    db.session.commit()
    run.job_id = queueing.job_id(run.id, run.attempt)
    db.session.commit()
    try:
        if secret_values:
            secret_store.save(redis_connection(), run.id, secret_values, timeout)
        queueing.enqueue_run(queue(), run.id, run.attempt, timeout)
    except RedisError as exc:
        if secret_values:
            _forget_secret_values(run.id)
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
    audit.record(
        "relaunch" if relaunch_of else "launch",
        f"run {run.id}",
        {
            "playbook": run.playbook,
            "target": run.target,
            "extra_vars": run.extra_vars,
            "check": run.check_mode,
            "timeout": run.timeout,
            "trigger": run.trigger,
            "relaunch_of": relaunch_of,
        },
        actor=launched_by,
    )
    return run


def _forget_secret_values(run_id):
    try:
        secret_store.delete(redis_connection(), run_id)
    except RedisError:
        logger.warning("run %s: secret values left in Redis until they expire", run_id)


def validate_limit(inventory, target, limit_hosts):
    """Return ``limit_hosts`` as a sorted list of hosts of ``target``, or None.

    Raises CatalogError for anything but known host names of the target, so
    that only those reach ansible-playbook's --limit.
    """
    if limit_hosts is None:
        return None
    if not isinstance(limit_hosts, list) or not limit_hosts:
        raise CatalogError(
            f"Invalid host limit {limit_hosts!r}: give a list of host names.",
            "limit_hosts",
            limit_hosts,
        )
    members = set(inventory.expand(target))
    for host in limit_hosts:
        if not isinstance(host, str) or not NAME_PATTERN.match(host):
            raise CatalogError(
                f"Invalid host {host!r} in the host limit: use inventory host names.",
                "limit_hosts",
                host,
            )
        if host not in members:
            raise CatalogError(
                f"Host {host!r} is not in target {target!r}; a host limit may only "
                "name hosts of the target.",
                "limit_hosts",
                host,
            )
    return sorted(set(limit_hosts))


def relaunch(run, *, launched_by=None, hosts="all"):
    """Launch a run again on all its hosts, its failed ones or its unfinished ones.

    Raises LaunchError as ``launch`` does, and for a ``hosts`` choice that
    does not apply to the run (see webapp.rerun), and for a run with secret
    extra vars, whose values are gone once it ended.
    """
    if run.secret_vars:
        raise LaunchError(
            f"Run {run.id} had secret extra vars ({', '.join(run.secret_vars)}), "
            "whose values Shepherd does not keep. Launch it again from the "
            "Launch page and give the values.",
            "extra_vars",
            run.secret_vars,
        )
    inventory = current_app.extensions["inventory"]
    scope = set(inventory.expand(run.target))
    if run.limit_hosts:
        scope &= set(run.limit_hosts)
    try:
        limit_hosts = rerun.hosts_to_rerun(run, hosts, scope)
    except rerun.RerunError as exc:
        raise LaunchError(str(exc), exc.field, exc.value, exc.status) from exc
    return launch(
        run.playbook,
        run.target,
        run.extra_vars,
        run.check_mode,
        run.timeout,
        launched_by=launched_by,
        trigger=run.trigger,
        relaunch_of=run.id,
        limit_hosts=limit_hosts,
    )


def cancel(run, *, requested_by=None):
    """Cancel a queued or running run; return True if this request ended it.

    Audits the cancel, and deletes the secret values of a queued run from
    Redis (a running job deletes its own when it ends). The row is ended
    first, so the worker's own handlers find it canceled. Then the RQ job is
    canceled (queued) or stopped (running), which kills the work horse and
    with it the playbook.
    """
    requested_by = requested_by or audit.current_actor()
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
    audit.record("cancel", f"run {run.id}", {"status_before": was}, actor=requested_by)
    if was == RunStatus.QUEUED.value and run.secret_vars:
        _forget_secret_values(run.id)
    stop_job(run, was)
    return True


def stop_job(run, was):
    """Take the RQ job of a run that was just ended out of Redis's hands.

    A queued job is canceled (and taken out of rq-scheduler's schedule,
    where a run waiting for a host or for drain mode has it). A started
    job gets RQ's stop-job command, so its worker kills the work horse and
    with it the playbook. Redis errors are logged, not raised: the work
    horse's heartbeat notices the ending and stops the playbook itself.
    """
    if not run.job_id:
        # A retry waiting for its time has no RQ job yet (jobs.retries).
        return
    connection = redis_connection()
    try:
        if was == RunStatus.QUEUED.value:
            queueing.unschedule(connection, run.job_id)
            Job.fetch(run.job_id, connection=connection).cancel()
        else:
            send_stop_job_command(connection, run.job_id)
    except (NoSuchJobError, InvalidJobOperation) as exc:
        logger.info("run %s: RQ job %s not stopped: %s", run.id, run.job_id, exc)
    except RedisError:
        logger.exception(
            "run %s: could not reach Redis to stop job %s", run.id, run.job_id
        )
