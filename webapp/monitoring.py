"""Endpoints for monitoring systems: Prometheus metrics, a health check and deliveries.

Every metric is computed from SQL and Redis when it is scraped, by a custom
collector, so the numbers are the same whichever gunicorn worker process
serves the scrape, and no multiprocess directory is needed.
"""

import json
import time

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError
from sqlalchemy import case, extract, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from . import history
from .extensions import db
from .models import Deployment, NotificationDelivery, RunStatus, database_time
from .redis_conn import count_workers, get_queue

bp = Blueprint("monitoring", __name__)

# Run duration buckets in seconds, from a quick ping to a long upgrade.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

# The reason codes that only sweeps write (see jobs.sweep).
SWEEP_RULES = ("stale_heartbeat", "rq_job_ended", "horse_gone", "job_lost")


def _redis():
    from .launch import redis_connection

    return redis_connection()


def _duration_seconds():
    """Return the SQL expression of a run's duration in seconds for this database."""
    if db.engine.dialect.name == "sqlite":
        return (
            func.julianday(Deployment.finished_at)
            - func.julianday(Deployment.started_at)
        ) * 86400.0
    return extract("epoch", Deployment.finished_at - Deployment.started_at)


class RunCollector:
    """A Prometheus collector that reads Shepherd's state at scrape time."""

    def collect(self):
        yield from self._runs()
        yield from self._durations()
        yield from self._sweep_rules()
        yield from self._redis_metrics()

    def _runs(self):
        by_status = GaugeMetricFamily(
            "shepherd_runs",
            "Runs in the history, by status and playbook.",
            labels=["status", "playbook"],
        )
        rows = db.session.execute(
            select(Deployment.status, Deployment.playbook, func.count()).group_by(
                Deployment.status, Deployment.playbook
            )
        ).all()
        for status, playbook, count in rows:
            by_status.add_metric([status, playbook], count)
        yield by_status

        running = db.session.scalars(
            select(Deployment).where(Deployment.status == RunStatus.RUNNING.value)
        ).all()
        now = database_time()
        stuck = sum(1 for run in running if history.health(run, now)["stuck"])
        yield GaugeMetricFamily(
            "shepherd_runs_running", "Runs in the running state.", value=len(running)
        )
        yield GaugeMetricFamily(
            "shepherd_runs_stuck",
            "Running runs with a stale heartbeat or running longer than STUCK_AFTER.",
            value=stuck,
        )

    def _durations(self):
        duration = _duration_seconds()
        columns = [
            func.sum(case((duration <= bound, 1), else_=0))
            for bound in DURATION_BUCKETS
        ]
        rows = db.session.execute(
            select(Deployment.playbook, func.count(), func.sum(duration), *columns)
            .where(
                Deployment.started_at.is_not(None), Deployment.finished_at.is_not(None)
            )
            .group_by(Deployment.playbook)
        ).all()
        family = HistogramMetricFamily(
            "shepherd_run_duration_seconds",
            "Time from start to end of finished runs, by playbook.",
            labels=["playbook"],
        )
        for playbook, count, total, *cumulative in rows:
            buckets = [
                (floatToGoString(bound), int(value or 0))
                for bound, value in zip(DURATION_BUCKETS, cumulative, strict=True)
            ]
            buckets.append(("+Inf", count))
            family.add_metric([playbook], buckets, float(total or 0.0))
        yield family

    def _sweep_rules(self):
        family = CounterMetricFamily(
            "shepherd_sweep_finalized_runs",
            "Runs ended by a sweep rule, by the rule's reason code.",
            labels=["rule"],
        )
        counts = dict(
            db.session.execute(
                select(Deployment.reason_code, func.count())
                .where(Deployment.reason_code.in_(SWEEP_RULES))
                .group_by(Deployment.reason_code)
            ).all()
        )
        for rule in SWEEP_RULES:
            family.add_metric([rule], counts.get(rule, 0))
        yield family

        failed = dict(
            db.session.execute(
                select(NotificationDelivery.status, func.count()).group_by(
                    NotificationDelivery.status
                )
            ).all()
        )
        deliveries = GaugeMetricFamily(
            "shepherd_notification_deliveries",
            "Notification deliveries, by status (pending, sent, failed).",
            labels=["status"],
        )
        for status in ("pending", "sent", "failed"):
            deliveries.add_metric([status], failed.get(status, 0))
        yield deliveries

    def _redis_metrics(self):
        from jobs.sweep import LAST_SWEEP_KEY

        up = GaugeMetricFamily("shepherd_redis_up", "1 when Redis responds, else 0.")
        try:
            connection = _redis()
            depth = get_queue(current_app.config, connection).count
            workers = count_workers(connection)
            raw = connection.get(LAST_SWEEP_KEY)
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "shepherd_queue_depth", "Run jobs waiting in the RQ queue.", value=depth
        )
        yield GaugeMetricFamily(
            "shepherd_workers_alive", "RQ workers registered in Redis.", value=workers
        )
        if raw:
            last = json.loads(raw)
            yield GaugeMetricFamily(
                "shepherd_sweep_age_seconds",
                "Seconds since the scheduler's last sweep.",
                value=max(0.0, time.time() - last["at"]),
            )
            last_counts = GaugeMetricFamily(
                "shepherd_last_sweep_runs",
                "Runs ended or repaired by each rule in the last sweep.",
                labels=["rule"],
            )
            for rule, count in last.get("counts", {}).items():
                if rule != "duration_ms":
                    last_counts.add_metric([rule], count)
            yield last_counts


@bp.get("/metrics")
def metrics():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector())
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/healthz")
def healthz():
    """Return 200 when database, Redis, a worker and the scheduler are fine, else 503."""
    from jobs.sweep import LAST_SWEEP_KEY

    checks = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except SQLAlchemyError as exc:
        db.session.rollback()
        checks["database"] = {"ok": False, "error": str(exc).splitlines()[0]}

    try:
        connection = _redis()
        connection.ping()
        checks["redis"] = {"ok": True}
        workers = count_workers(connection)
        checks["workers"] = {"ok": workers > 0, "count": workers}
        raw = connection.get(LAST_SWEEP_KEY)
    except RedisError as exc:
        checks["redis"] = {"ok": False, "error": str(exc)}
        raw = None
    limit = 3 * current_app.config["SWEEP_INTERVAL"]
    if raw:
        age = time.time() - json.loads(raw)["at"]
        checks["scheduler"] = {"ok": age < limit, "sweep_age": round(age, 1)}
    else:
        checks["scheduler"] = {"ok": False, "sweep_age": None}
    checks["scheduler"]["max_age"] = limit
    if "workers" not in checks:
        checks["workers"] = {"ok": False, "count": None}

    failing = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "fail" if failing else "ok", "failing": failing, "checks": checks}
    return jsonify(body), 503 if failing else 200


def _recent_deliveries():
    query = select(NotificationDelivery).order_by(NotificationDelivery.id.desc())
    status = request.args.get("status")
    if status:
        query = query.where(NotificationDelivery.status == status)
    return db.session.scalars(query.limit(200)).all()


@bp.get("/api/notifications")
def notification_deliveries():
    """List recent notification deliveries, newest first (``?status=failed`` filters)."""
    rows = _recent_deliveries()
    return jsonify({"deliveries": [row.to_dict() for row in rows]})


@bp.get("/notifications")
def notifications_page():
    return render_template(
        "monitoring/notifications.html",
        deliveries=_recent_deliveries(),
        retries=len(current_app.config["NOTIFY_RETRY_INTERVALS"]),
    )
