"""Pages for runs: history, the run page with its live output stream, and actions."""

import json
import time

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from . import ansi, history, launch
from .extensions import db
from .models import Deployment

bp = Blueprint("runs", __name__, url_prefix="/runs")

# How often the event stream looks for new output and status, in seconds.
STREAM_POLL = 0.2
# The stream closes after this long; browsers reconnect with Last-Event-ID.
STREAM_MAX_SECONDS = 300


def get_run(run_id):
    run = db.session.get(Deployment, run_id)
    if run is None:
        abort(404, description=f"Run {run_id} not found.")
    return run


@bp.get("")
def index():
    try:
        page = history.query_page(request.args)
    except history.FilterError as exc:
        flash(str(exc), "danger")
        page = history.Page(rows=[], next_before=None)
    active = any(row.is_active for row in page.rows)
    return render_template(
        "runs/index.html",
        page=page,
        args=request.args,
        active=active,
        health=history.health,
    )


@bp.get("/<int:run_id>")
def detail(run_id):
    run = get_run(run_id)
    return render_template(
        "runs/detail.html",
        run=run,
        data=history.detail_dict(run),
        output=ansi.to_html("".join(history.iter_output(run_id))),
        last_chunk=history.last_chunk_id(run_id),
        health=history.health,
    )


@bp.get("/<int:run_id>/output.txt")
def download(run_id):
    run = get_run(run_id)
    text = (ansi.strip(chunk) for chunk in history.iter_output(run.id))
    return Response(
        stream_with_context(text),
        mimetype="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="run-{run.id}.txt"'},
    )


@bp.get("/<int:run_id>/events")
def events(run_id):
    """Stream new output and status changes as Server-Sent Events.

    Resumes after the chunk id given in Last-Event-ID (or ``after``), so a
    page opened mid-run, or a reconnecting browser, misses nothing. Ends
    with an ``end`` event once the run has ended and its output is sent.
    """
    get_run(run_id)
    after = request.headers.get("Last-Event-ID") or request.args.get("after") or 0
    try:
        after = int(after)
    except ValueError:
        abort(400, description=f"Invalid Last-Event-ID {after!r}: give a chunk id.")
    return Response(
        stream_with_context(_event_stream(run_id, after)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event_stream(run_id, after):
    deadline = time.monotonic() + STREAM_MAX_SECONDS
    last_state = None
    yield "retry: 1000\n\n"
    while time.monotonic() < deadline:
        db.session.rollback()  # start a fresh read of the database
        run = db.session.get(Deployment, run_id, populate_existing=True)
        chunks = history.output_after(run_id, after)
        for chunk_id, text in chunks:
            after = chunk_id
            payload = json.dumps({"html": str(ansi.to_html(text))})
            yield f"id: {chunk_id}\nevent: output\ndata: {payload}\n\n"
        state = history.detail_dict(run)
        state.pop("rq", None)
        state_key = json.dumps(state, sort_keys=True, default=str)
        if state_key != last_state:
            last_state = state_key
            yield f"event: status\ndata: {state_key}\n\n"
        if not run.is_active and not chunks:
            yield "event: end\ndata: {}\n\n"
            return
        if not chunks:
            time.sleep(STREAM_POLL)
    yield ": reconnect\n\n"


@bp.post("/<int:run_id>/cancel")
def cancel(run_id):
    run = get_run(run_id)
    if launch.cancel(run, requested_by=request.remote_addr or "anonymous"):
        flash(f"Run {run.id} canceled.", "warning")
    else:
        flash(f"Run {run.id} had already ended.", "info")
    return redirect(url_for("runs.detail", run_id=run.id))


@bp.post("/<int:run_id>/relaunch")
def relaunch(run_id):
    run = get_run(run_id)
    try:
        new_run = launch.relaunch(run, launched_by=request.remote_addr or "anonymous")
    except launch.LaunchError as exc:
        flash(str(exc), "danger")
        return redirect(url_for("runs.detail", run_id=run.id))
    flash(f"Run {new_run.id} queued again from run {run.id}.", "success")
    return redirect(url_for("runs.detail", run_id=new_run.id, launched=1))
