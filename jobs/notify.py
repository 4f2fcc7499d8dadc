"""Notifications: tell people by webhook or email when runs fail or get stuck.

Events: a run ending failed, timeout or abandoned (``run_failed``,
``run_timeout``, ``run_abandoned``), a run running for longer than
STUCK_AFTER (``run_stuck``), and more failures in the last hour than
FAILURE_ALERT_THRESHOLD (``failure_threshold``).

Routes come from the environment (NOTIFY_WEBHOOK_URL, NOTIFY_EMAIL_TO, for
the playbooks in NOTIFY_PLAYBOOKS or all) and from an optional YAML file
(NOTIFY_ROUTES), a list of mappings such as::

    - playbooks: [update-debian.yml]     # optional, default all
      events: [run_failed, run_timeout]  # optional, default all
      webhook: http://127.0.0.1:9000/hook
      format: slack                      # optional, json by default
      email: [ops@example.org]

Each delivery is a NotificationDelivery row and an RQ job on the
notification queue, retried with backoff (NOTIFY_RETRY_INTERVALS). Nothing
here ever changes a run: every error is logged and recorded, never raised
to the caller that ended the run.
"""

import json
import logging
import smtplib
import urllib.error
import urllib.request
from datetime import timedelta
from email.message import EmailMessage

import yaml
from flask import current_app
from redis.exceptions import RedisError
from rq import Retry, get_current_job
from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import (
    Deployment,
    NotificationDelivery,
    RunStatus,
    database_time,
    utcnow,
)
from webapp.redis_conn import connect, get_notify_queue

logger = logging.getLogger(__name__)

RUN_EVENTS = {
    RunStatus.FAILED.value: "run_failed",
    RunStatus.TIMEOUT.value: "run_timeout",
    RunStatus.ABANDONED.value: "run_abandoned",
}
EVENTS = (*RUN_EVENTS.values(), "run_stuck", "failure_threshold")
FAILED_STATUSES = tuple(RUN_EVENTS)

THRESHOLD_KEY = "shepherd:notify:failure-threshold"
STUCK_KEY = "shepherd:notify:stuck:{run_id}:{attempt}"
# How long a stuck run is remembered as notified (seconds).
STUCK_MEMORY = 30 * 86400


class NotifyError(ValueError):
    """A notification route is invalid."""


def _connection():
    connection = current_app.extensions.get("redis")
    if connection is None:
        connection = connect(current_app.config["REDIS_URL"])
        current_app.extensions["redis"] = connection
    return connection


def load_routes(config):
    """Return the notification routes: the global one from the environment, then the file's.

    Raises NotifyError naming the file and entry when the file is invalid.
    """
    routes = []
    if config["NOTIFY_WEBHOOK_URL"] or config["NOTIFY_EMAIL_TO"]:
        routes.append(
            {
                "playbooks": config["NOTIFY_PLAYBOOKS"],
                "events": [],
                "webhook": config["NOTIFY_WEBHOOK_URL"],
                "format": config["NOTIFY_WEBHOOK_FORMAT"],
                "email": config["NOTIFY_EMAIL_TO"],
            }
        )
    path = config["NOTIFY_ROUTES"]
    if not path:
        return routes
    try:
        with open(path) as handle:
            entries = yaml.safe_load(handle) or []
    except (OSError, yaml.YAMLError) as exc:
        raise NotifyError(f"NOTIFY_ROUTES file {path!r} cannot be read: {exc}") from exc
    if not isinstance(entries, list):
        raise NotifyError(f"NOTIFY_ROUTES file {path!r} must contain a YAML list.")
    for number, entry in enumerate(entries, 1):
        routes.append(_parse_route(path, number, entry))
    return routes


def _parse_route(path, number, entry):
    where = f"route {number} of {path!r}"
    if not isinstance(entry, dict):
        raise NotifyError(f"{where} must be a mapping, not {entry!r}.")
    email = entry.get("email") or []
    route = {
        "playbooks": list(entry.get("playbooks") or []),
        "events": list(entry.get("events") or []),
        "webhook": entry.get("webhook") or "",
        "format": entry.get("format") or "json",
        "email": [email] if isinstance(email, str) else list(email),
    }
    unknown = [e for e in route["events"] if e not in EVENTS]
    if unknown:
        raise NotifyError(
            f"{where} names unknown events {unknown!r}; use {', '.join(EVENTS)}."
        )
    if route["format"] not in ("json", "slack"):
        raise NotifyError(f"{where} has format {route['format']!r}; use json or slack.")
    if not route["webhook"] and not route["email"]:
        raise NotifyError(f"{where} has neither a webhook nor an email address.")
    return route


def _matching(routes, event, playbook):
    for route in routes:
        if route["events"] and event not in route["events"]:
            continue
        if route["playbooks"] and playbook not in route["playbooks"]:
            continue
        yield route


def run_ended(run_id, status):
    """Enqueue the notifications for a run that has just ended with ``status``.

    Called once per run by jobs.state.finish, by whichever caller ended it.
    Never raises: a failure is logged and the run is unaffected.
    """
    return runs_ended([(run_id, status)])


def runs_ended(endings):
    """Enqueue the notifications for runs that have just ended; return how many.

    ``endings`` contains (run id, terminal status) pairs. The routes are read
    and the failure threshold checked once for the whole list, so a sweep
    that ends many runs at once pays for them once. Never raises.
    """
    events = {
        run_id: RUN_EVENTS[RunStatus(status).value]
        for run_id, status in endings
        if RunStatus(status).value in RUN_EVENTS
    }
    if not events:
        return 0
    try:
        routes = load_routes(current_app.config)
        sent = 0
        if routes:
            runs = db.session.scalars(
                select(Deployment)
                .where(Deployment.id.in_(events))
                .execution_options(populate_existing=True)
            )
            for run in runs:
                sent += notify(events[run.id], run, routes=routes)
        return sent + check_failure_threshold()
    except Exception:
        # Broad on purpose: the runs have ended already, and an error here
        # must not reach the worker, sweep or request that ended them.
        db.session.rollback()
        logger.exception(
            "runs %s: could not enqueue notifications", ", ".join(map(str, events))
        )
        return 0


def run_stuck(run, running_for):
    """Enqueue a run_stuck notification once per run execution; return 1 if enqueued."""
    key = STUCK_KEY.format(run_id=run.id, attempt=run.attempt)
    if not _connection().set(key, 1, nx=True, ex=STUCK_MEMORY):
        return 0
    return notify("run_stuck", run, running_for=running_for)


def check_failure_threshold():
    """Send one failure_threshold alert when the last hour's failures reach the threshold.

    At most one alert per hour, across every process (a Redis key decides).
    Returns the number of deliveries enqueued.
    """
    config = current_app.config
    threshold = config["FAILURE_ALERT_THRESHOLD"]
    since = database_time() - timedelta(hours=1)
    failures = db.session.scalar(
        select(func.count()).where(
            Deployment.status.in_(FAILED_STATUSES), Deployment.finished_at >= since
        )
    )
    if failures < threshold:
        return 0
    if not _connection().set(THRESHOLD_KEY, failures, nx=True, ex=3600):
        return 0
    logger.warning(
        "notify: %d failed runs in the last hour (threshold %d)", failures, threshold
    )
    return notify("failure_threshold", None, failures=failures, threshold=threshold)


def notify(event, run, routes=None, **details):
    """Record and enqueue one delivery per matching channel; return how many.

    ``routes`` defaults to the ones load_routes reads now.
    """
    config = current_app.config
    if routes is None:
        routes = load_routes(config)
    playbook = run.playbook if run is not None else None
    message = describe(event, run, details)
    payload = {
        "event": event,
        "text": message,
        "run": _run_summary(run),
        "details": details,
    }

    deliveries = []
    for route in _matching(routes, event, playbook):
        if route["webhook"]:
            body = {"text": message} if route["format"] == "slack" else payload
            deliveries.append(("webhook", route["webhook"], body))
        if route["email"]:
            mail = {"subject": message.splitlines()[0], "text": message}
            deliveries.append(("email", ", ".join(route["email"]), mail))
    rows = [
        NotificationDelivery(
            deployment_id=run.id if run is not None else None,
            event=event,
            channel=channel,
            destination=destination,
            payload=body,
        )
        for channel, destination, body in deliveries
    ]
    if not rows:
        return 0
    db.session.add_all(rows)
    db.session.commit()

    queue = get_notify_queue(config, _connection())
    intervals = config["NOTIFY_RETRY_INTERVALS"]
    enqueued = 0
    for row in rows:
        try:
            queue.enqueue(
                "jobs.notify.deliver_notification",
                row.id,
                retry=Retry(max=len(intervals), interval=intervals),
                description=f"notification {row.id}: {event} by {row.channel}",
            )
            enqueued += 1
        except RedisError as exc:
            _record_failure(row, exc, final=True)
    return enqueued


def _run_summary(run):
    if run is None:
        return None
    return {
        "id": run.id,
        "playbook": run.playbook,
        "target": run.target,
        "status": run.status,
        "reason": run.reason,
        "reason_code": run.reason_code,
        "host": run.hostname,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def describe(event, run, details):
    """Return the human-readable message for ``event``: a subject line, then detail."""
    if event == "failure_threshold":
        return (
            f"Shepherd: {details['failures']} runs failed in the last hour "
            f"(alert threshold {details['threshold']})"
        )
    subject = f"Shepherd: run {run.id} ({run.playbook} on {run.target})"
    if event == "run_stuck":
        hours = details["running_for"] / 3600
        return f"{subject} is stuck: running for {hours:.1f} h on host {run.hostname}"
    return f"{subject} ended {run.status}\n{run.reason or ''}".rstrip()


def deliver_notification(delivery_id):
    """Send one recorded notification (RQ job); safe to run twice.

    A delivery already sent is skipped. On an error the row records the
    attempt and the job raises, so RQ retries it; after the last retry the
    row is marked failed.
    """
    # The work horse is forked from a worker that has pooled connections open.
    db.engine.dispose(close=False)
    delivery = db.session.get(NotificationDelivery, delivery_id)
    if delivery is None or delivery.status == "sent":
        return delivery.status if delivery else None
    config = current_app.config
    try:
        if delivery.channel == "webhook":
            send_webhook(delivery.destination, delivery.payload)
        else:
            send_email(config, delivery.destination, delivery.payload)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        _record_failure(delivery, exc)
        raise
    delivery.attempts += 1
    delivery.status = "sent"
    delivery.error = None
    delivery.updated_at = utcnow()
    db.session.commit()
    logger.info(
        "notification %s: %s sent by %s to %s",
        delivery.id,
        delivery.event,
        delivery.channel,
        delivery.destination,
    )
    return "sent"


def _record_failure(delivery, exc, final=None):
    if final is None:
        job = get_current_job()
        final = job is None or not job.retries_left
    delivery.attempts += 1
    delivery.error = f"{type(exc).__name__}: {exc}"
    delivery.updated_at = utcnow()
    if final:
        delivery.status = "failed"
    db.session.commit()
    if final:
        logger.error(
            "notification %s: %s by %s to %s failed after %d attempts: %s",
            delivery.id,
            delivery.event,
            delivery.channel,
            delivery.destination,
            delivery.attempts,
            delivery.error,
        )
    else:
        logger.warning(
            "notification %s: attempt %d by %s failed, will retry: %s",
            delivery.id,
            delivery.attempts,
            delivery.channel,
            delivery.error,
        )


def send_webhook(url, body, timeout=10.0):
    """POST ``body`` as JSON to ``url``; raise OSError unless it returns 2xx."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook URL {url!r} must start with http:// or https://")
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "shepherd"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(
                url,
                response.status,
                "webhook returned an error",
                response.headers,
                None,
            )


def send_email(config, recipients, mail):
    """Send ``mail`` (subject and text) to the comma-separated ``recipients`` by SMTP."""
    if not config["SMTP_HOST"]:
        raise ValueError(
            "SMTP_HOST is not set, so email notifications cannot be sent; "
            "set SMTP_HOST (and SMTP_PORT) or remove the email addresses."
        )
    message = EmailMessage()
    message["From"] = config["SMTP_FROM"]
    message["To"] = recipients
    message["Subject"] = mail["subject"]
    message.set_content(mail["text"])
    with smtplib.SMTP(
        config["SMTP_HOST"], config["SMTP_PORT"], timeout=config["SMTP_TIMEOUT"]
    ) as smtp:
        if config["SMTP_STARTTLS"]:
            smtp.starttls()
        if config["SMTP_USERNAME"]:
            smtp.login(config["SMTP_USERNAME"], config["SMTP_PASSWORD"])
        smtp.send_message(message)


def notify_stuck_runs(config):
    """Notify once about each run running for longer than STUCK_AFTER (a sweep rule).

    Returns the number of deliveries enqueued. Never raises.
    """
    now = database_time()
    cutoff = now - timedelta(seconds=config["STUCK_AFTER"])
    try:
        runs = db.session.scalars(
            select(Deployment).where(
                Deployment.status == RunStatus.RUNNING.value,
                Deployment.started_at < cutoff,
            )
        ).all()
        return sum(
            run_stuck(run, (now - run.started_at).total_seconds()) for run in runs
        )
    except Exception:
        # Broad on purpose: a notification error must not stop the sweep.
        db.session.rollback()
        logger.exception("notify: could not notify about stuck runs")
        return 0
