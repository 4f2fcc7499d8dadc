"""Figures for the dashboard: counts of active and stuck runs, workers and sweeps."""

import json
import time

from redis.exceptions import RedisError
from rq import Worker
from sqlalchemy import func, select

from . import history
from .extensions import db
from .models import Deployment, RunStatus


def summary():
    """Return the live counts shown at the top of the dashboard."""
    from jobs.sweep import LAST_SWEEP_KEY

    from .launch import queue, redis_connection

    counts = dict(
        db.session.execute(
            select(Deployment.status, func.count())
            .where(
                Deployment.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
            )
            .group_by(Deployment.status)
        ).all()
    )
    running = db.session.scalars(
        select(Deployment).where(Deployment.status == RunStatus.RUNNING.value)
    ).all()
    stuck = sum(1 for run in running if history.health(run)["stuck"])
    result = {
        "queued": counts.get(RunStatus.QUEUED.value, 0),
        "running": counts.get(RunStatus.RUNNING.value, 0),
        "stuck": stuck,
        "workers": None,
        "queue_depth": None,
        "sweep_age": None,
        "redis_error": None,
    }
    try:
        connection = redis_connection()
        result["workers"] = Worker.count(connection=connection)
        result["queue_depth"] = queue().count
        raw = connection.get(LAST_SWEEP_KEY)
        if raw:
            result["sweep_age"] = time.time() - json.loads(raw)["at"]
    except RedisError as exc:
        result["redis_error"] = str(exc)
    return result
