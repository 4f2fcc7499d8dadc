"""The JSON API under /api: launch, list, read and cancel runs; list the catalog."""

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    request,
    stream_with_context,
)
from flask_login import current_user

from jobs import leases

from . import dashboard, history, launch
from .catalog import list_playbooks
from .extensions import db
from .models import Deployment

bp = Blueprint("api", __name__, url_prefix="/api")


def error(status, message, value=None, field=None):
    body = {"error": message, "message": message}
    if field is not None:
        body["field"] = field
    if value is not None:
        body["value"] = value
    return jsonify(body), status


def get_run_or_404(run_id):
    run = db.session.get(Deployment, run_id)
    if run is None:
        return None, error(404, f"Deployment {run_id} not found.", run_id, "id")
    return run, None


@bp.post("/deployments")
def create_deployment():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error(
            400,
            'The request body must be a JSON object such as {"playbook": "ping.yml", "target": "local"}.',
        )
    try:
        run = launch.launch(
            body.get("playbook"),
            body.get("target"),
            body.get("extra_vars"),
            body.get("check", False),
            body.get("timeout"),
            launched_by=launched_by(),
        )
    except launch.LaunchError as exc:
        return error(exc.status, str(exc), exc.value, exc.field)
    return jsonify(run.to_dict()), 201


def launched_by():
    """Return the name of the user behind this request (session or token)."""
    return current_user.name


@bp.get("/deployments")
def list_deployments():
    try:
        page = history.query_page(request.args, limit_default=50)
    except history.FilterError as exc:
        return error(400, str(exc), exc.value, exc.field)
    rq_views = history.rq_states(page.rows)
    return jsonify(
        {
            "deployments": [
                history.row_dict(row, rq=rq_views.get(row.id)) for row in page.rows
            ],
            "next_before": page.next_before,
        }
    )


@bp.get("/deployments/<int:run_id>")
def get_deployment(run_id):
    run, failure = get_run_or_404(run_id)
    if failure:
        return failure
    return jsonify(history.detail_dict(run))


@bp.get("/deployments/<int:run_id>/output")
def get_output(run_id):
    run, failure = get_run_or_404(run_id)
    if failure:
        return failure
    attempt = request.args.get("attempt")
    if attempt is not None:
        try:
            attempt = int(attempt)
        except ValueError:
            return error(
                400,
                f"Invalid attempt {attempt!r}: give an attempt number as listed "
                f"in the attempts of GET /api/deployments/{run_id}.",
                attempt,
                "attempt",
            )
    return Response(
        stream_with_context(history.iter_output(run_id, attempt=attempt)),
        mimetype="text/plain; charset=utf-8",
    )


@bp.post("/deployments/<int:run_id>/cancel")
def cancel_deployment(run_id):
    run, failure = get_run_or_404(run_id)
    if failure:
        return failure
    if not run.is_active:
        return error(
            409,
            f"Deployment {run_id} already ended as {run.status}.",
            run.status,
            "status",
        )
    if not launch.cancel(run, requested_by=launched_by()):
        db.session.refresh(run)
        return error(
            409,
            f"Deployment {run_id} already ended as {run.status}.",
            run.status,
            "status",
        )
    db.session.refresh(run)
    return jsonify(run.to_dict())


@bp.post("/deployments/<int:run_id>/relaunch")
def relaunch_deployment(run_id):
    run, failure = get_run_or_404(run_id)
    if failure:
        return failure
    body = request.get_json(silent=True)
    hosts = body.get("hosts", "all") if isinstance(body, dict) else "all"
    try:
        new_run = launch.relaunch(run, launched_by=launched_by(), hosts=hosts)
    except launch.LaunchError as exc:
        return error(exc.status, str(exc), exc.value, exc.field)
    return jsonify(new_run.to_dict()), 201


@bp.get("/stats")
def stats():
    """Dashboard figures and chart series (see webapp.dashboard)."""
    return jsonify(dashboard.stats())


@bp.get("/playbooks")
def playbooks():
    entries = list_playbooks(current_app.config["PLAYBOOK_DIR"])
    return jsonify({"playbooks": [p.to_dict() for p in entries]})


@bp.get("/targets")
def targets():
    return jsonify(
        {**current_app.extensions["inventory"].targets(), "leases": leases.current()}
    )
