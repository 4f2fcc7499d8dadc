"""Reading a run's attempts and the state of its automatic retries for pages and the API."""

from sqlalchemy import select

from jobs.retries import is_waiting

from .extensions import db
from .models import Attempt, utcnow


def list_attempts(run_id):
    """Return the ended attempts of a run as dicts, oldest first."""
    rows = db.session.scalars(
        select(Attempt)
        .where(Attempt.deployment_id == run_id)
        .order_by(Attempt.number, Attempt.id)
    )
    return [row.to_dict() for row in rows]


def retry_summary(run, now=None):
    """Return the retry state of a run, or None for a run never retried.

    ``label`` reads "attempt 2 of 3" while the run is active. ``note`` gives
    the reason a queued retry waits, for example "retrying in 25 s after:
    unreachable: web01 (return code 4)".
    """
    if not run.retries:
        return None
    number = run.retries + 1
    waiting = is_waiting(run)
    summary = {
        "attempt": number,
        "of": run.max_attempts,
        "waiting": waiting,
        "retry_at": run.retry_at.isoformat() if run.retry_at else None,
        "label": f"attempt {number} of {run.max_attempts}",
        "note": None,
    }
    if not run.is_active:
        summary["label"] = f"ended after {number} attempts"
    elif waiting:
        seconds = max(0.0, (run.retry_at - (now or utcnow())).total_seconds())
        summary["note"] = f"retrying in {seconds:.0f} s after: {run.reason}"
    elif run.status == "queued":
        summary["note"] = f"retry queued after: {run.reason}"
    return summary
