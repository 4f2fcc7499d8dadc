"""The web server's start-up check of the run history."""

import logging

from redis.exceptions import RedisError
from sqlalchemy import func, select

from .extensions import db
from .models import Deployment, RunStatus

logger = logging.getLogger(__name__)


def reconcile(app):
    """Log the active runs and end those whose heartbeat is already stale.

    Safe beside running sweeps: every ending is a compare-and-set.
    """
    from jobs.sweep import end_stale_heartbeats

    from .redis_conn import connect

    with app.app_context():
        counts = dict(
            db.session.execute(
                select(Deployment.status, func.count())
                .where(
                    Deployment.status.in_(
                        [RunStatus.QUEUED.value, RunStatus.RUNNING.value]
                    )
                )
                .group_by(Deployment.status)
            ).all()
        )
        logger.info(
            "web: start-up check: %s queued, %s running",
            counts.get("queued", 0),
            counts.get("running", 0),
        )
        try:
            ended = end_stale_heartbeats(connect(app.config["REDIS_URL"]), app.config)
        except RedisError as exc:
            logger.warning("web: start-up check could not reach Redis: %s", exc)
            return
        if ended:
            logger.warning(
                "web: start-up check ended %d run(s) with a stale heartbeat", ended
            )
        db.session.remove()
