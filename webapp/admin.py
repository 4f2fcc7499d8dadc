"""Admin actions: drain mode and forced endings, as JSON API and as page forms.

Each action is recorded in the audit log with the signed-in user's name.
"""

import logging

from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    redirect,
    request,
    url_for,
)
from flask_login import current_user

from jobs import drain, output, process, state

from . import audit
from .api import error
from .extensions import db
from .launch import stop_job
from .models import Deployment, RunStatus

logger = logging.getLogger(__name__)

bp = Blueprint("admin", __name__)

MAX_REASON_LENGTH = 2000
ON_WORDS = {True: True, False: False, "on": True, "off": False}


def _user():
    return current_user.name


@bp.get("/api/drain")
def drain_status():
    return jsonify(drain.status())


@bp.post("/api/drain")
def drain_api():
    body = request.get_json(silent=True)
    value = body.get("drain") if isinstance(body, dict) else None
    # 1 and 0 compare equal to True and False, so check the type first.
    if not isinstance(value, (bool, str)) or value not in ON_WORDS:
        return error(
            400,
            f'Invalid drain {value!r}: send {{"drain": "on"}} or {{"drain": "off"}}.',
            value,
            "drain",
        )
    status = drain.set_draining(ON_WORDS[value], requested_by=_user())
    audit.record("drain", "service", {"draining": ON_WORDS[value]})
    return jsonify(status)


@bp.post("/drain")
def drain_form():
    value = request.form.get("drain")
    if value not in ("on", "off"):
        flash(f"Invalid drain {value!r}: choose on or off.", "danger")
    else:
        drain.set_draining(value == "on", requested_by=_user())
        audit.record("drain", "service", {"draining": value == "on"})
        flash(f"Drain mode {value}.", "warning" if value == "on" else "info")
    return redirect(url_for("views.index"))


def force_end(run, reason, *, requested_by):
    """End a queued or running run now, with ``reason``; True if this call did.

    The ending is written first, so a playbook that exits when its processes
    are killed cannot record its own verdict. Then its processes are killed
    if they run on this host. On another host, the worker there kills them
    at its next host sweep, because the run is no longer live.
    """
    was = run.status
    hostname = current_app.config["HOSTNAME"]
    won = state.finish(
        run.id,
        RunStatus.ABANDONED,
        f"force-ended by {requested_by}: {reason}",
        decided_by="admin",
        reason_code="forced",
        evidence={
            "requested_by": requested_by,
            "reason": reason,
            "status_before": was,
            "worker": run.worker_name,
            "host": run.hostname,
            "pid": run.pid,
            "requested_on": hostname,
        },
        explain=True,
    )
    if not won:
        return False
    audit.record("force_end", f"run {run.id}", {"reason": reason, "status_before": was})
    stop_job(run, was)
    if run.hostname == hostname:
        process.kill_run(hostname, run.id, run.pid, run.pid_started)
        output.catch_up(db.session.get(Deployment, run.id, populate_existing=True))
    return True


def _reason_error(reason):
    if not isinstance(reason, str) or not reason.strip():
        return "A reason is required to force-end a run, for example 'host rebooted'."
    if len(reason) > MAX_REASON_LENGTH:
        return (
            f"The reason is {len(reason)} characters; the limit is {MAX_REASON_LENGTH}."
        )
    return None


@bp.post("/api/deployments/<int:run_id>/force-end")
def force_end_api(run_id):
    run = db.session.get(Deployment, run_id)
    if run is None:
        return error(404, f"Deployment {run_id} not found.", run_id, "id")
    body = request.get_json(silent=True)
    reason = body.get("reason") if isinstance(body, dict) else None
    problem = _reason_error(reason)
    if problem:
        return error(400, problem, reason, "reason")
    if not run.is_active or not force_end(run, reason.strip(), requested_by=_user()):
        db.session.refresh(run)
        return error(
            409,
            f"Deployment {run_id} already ended as {run.status}.",
            run.status,
            "status",
        )
    db.session.refresh(run)
    return jsonify(run.to_dict())


@bp.post("/runs/<int:run_id>/force-end")
def force_end_form(run_id):
    run = db.get_or_404(Deployment, run_id)
    reason = request.form.get("reason")
    problem = _reason_error(reason)
    if problem:
        flash(problem, "danger")
    elif run.is_active and force_end(run, reason.strip(), requested_by=_user()):
        flash(f"Run {run.id} force-ended.", "warning")
    else:
        flash(f"Run {run.id} had already ended.", "info")
    return redirect(url_for("runs.detail", run_id=run.id))
