"""Retrying a run's database writes through a brief outage, with backoff.

A dropped PostgreSQL connection or a SQLite file locked by a long writer
must not turn a healthy run into a failed one. Writes that would otherwise
give up retry here: the first retry after FIRST_DELAY seconds, each next
one after twice the previous delay, at most MAX_DELAY apart.
"""

import logging
import time

from sqlalchemy.exc import DBAPIError, PendingRollbackError

from webapp.extensions import db

logger = logging.getLogger(__name__)

FIRST_DELAY = 0.25
MAX_DELAY = 2.0
# Errors a new try may cure: the connection dropped, the server restarted,
# or the database stayed locked past SQLite's busy timeout.
TRANSIENT = (DBAPIError, PendingRollbackError)


class Backoff:
    """Delays between the tries of one write: FIRST_DELAY doubling to MAX_DELAY."""

    def __init__(self, first=FIRST_DELAY, maximum=MAX_DELAY):
        self.first = first
        self.maximum = maximum
        self.failures = 0
        self.failing_since = None

    def failed(self):
        """Record a failure and return the seconds to wait before the next try."""
        if self.failures == 0:
            self.failing_since = time.monotonic()
        self.failures += 1
        return min(self.first * 2 ** (self.failures - 1), self.maximum)

    def succeeded(self):
        """Reset, and return (failures, seconds spent failing) before this success."""
        failures = self.failures
        spent = time.monotonic() - self.failing_since if failures else 0.0
        self.failures = 0
        self.failing_since = None
        return failures, spent


def rollback():
    """Roll the session back after a failed write, even on a dead connection."""
    try:
        db.session.rollback()
    except TRANSIENT:
        logger.debug("rollback after a failed write failed too", exc_info=True)


def write(run_id, what, func, *args, timeout=60.0, **kwargs):
    """Call ``func(*args, **kwargs)`` until it succeeds or ``timeout`` s have passed.

    Returns what ``func`` returns; raises its last error after ``timeout``.
    ``func`` must be safe to run twice (every jobs.state write is).
    """
    backoff = Backoff()
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = func(*args, **kwargs)
        except TRANSIENT as exc:
            rollback()
            delay = backoff.failed()
            if time.monotonic() + delay > deadline:
                logger.error(
                    "run %s: %s failed %d times over %.1f s; giving up: %s",
                    run_id,
                    what,
                    backoff.failures,
                    time.monotonic() - backoff.failing_since,
                    exc,
                )
                raise
            logger.warning(
                "run %s: %s failed (try %d), retrying in %.2f s: %s",
                run_id,
                what,
                backoff.failures,
                delay,
                exc,
            )
            time.sleep(delay)
            continue
        failures, spent = backoff.succeeded()
        if failures:
            logger.info(
                "run %s: %s succeeded after %d failed tries over %.1f s",
                run_id,
                what,
                failures,
                spent,
            )
        return result
