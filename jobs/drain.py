"""Drain mode: a service-wide flag in SQL that stops queued runs from starting.

Running runs go on to their end. Work horses read the flag before they
start a run, and while it is set they put the run back to wait. The web app
reads it to explain why runs stay queued and, with DRAIN_REJECT, to reject
launches.
"""

import logging

from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import Deployment, RunStatus, Setting, utcnow

logger = logging.getLogger(__name__)

DRAIN_KEY = "drain"


def _setting():
    return db.session.get(Setting, DRAIN_KEY, populate_existing=True)


def is_draining():
    """Return True while the service is draining."""
    setting = _setting()
    return bool(setting and setting.value and setting.value.get("on"))


def set_draining(on, *, requested_by):
    """Turn drain mode on or off and return the new status.

    Safe to call twice: turning it on again keeps the first start time.
    """
    setting = _setting()
    was_on = bool(setting and setting.value and setting.value.get("on"))
    if setting is None:
        setting = Setting(key=DRAIN_KEY)
        db.session.add(setting)
    if on != was_on:
        setting.value = {"on": bool(on)}
        setting.updated_at = utcnow()
        setting.updated_by = requested_by
    db.session.commit()
    if on != was_on:
        logger.warning(
            "drain mode turned %s by %s", "on" if on else "off", requested_by
        )
    return status()


def status():
    """Return the drain flag with the counts that tell when a restart is safe."""
    setting = _setting()
    on = bool(setting and setting.value and setting.value.get("on"))
    counts = dict(
        db.session.execute(
            select(Deployment.status, func.count())
            .where(
                Deployment.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
            )
            .group_by(Deployment.status)
        ).all()
    )
    running = counts.get(RunStatus.RUNNING.value, 0)
    return {
        "draining": on,
        "since": setting.updated_at.isoformat() if on else None,
        "by": setting.updated_by if on else None,
        "running": running,
        "queued": counts.get(RunStatus.QUEUED.value, 0),
        # Queued runs wait in SQL and in Redis and start after the restart.
        "safe_to_restart": on and running == 0,
    }
