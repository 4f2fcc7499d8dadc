"""Pages for runs: history, the run page with its live output stream, and actions."""

import json
import time

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    get_template_attribute,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user

from . import ansi, history, launch, waits
from .attempts import list_attempts, retry_summary
from .catalog import list_playbooks
from .extensions import db
from .models import Deployment, database_time

bp = Blueprint("runs", __name__, url_prefix="/runs")

# How often the event stream looks for new output and status, in seconds.
STREAM_POLL = 0.2
# The stream closes after this long; browsers reconnect with Last-Event-ID.
# NOTE: each open stream occupies one server thread, so the Procfile's gunicorn
# (2 workers of 8 threads) serves at most 16 streaming run pages at once.
STREAM_MAX_SECONDS = 300
# Seconds of silence after which the stream sends a comment line.
STREAM_KEEPALIVE = 15
# The run page shows at most this many characters of output inline (the
# newest ones); the download has everything.
INLINE_OUTPUT_CHARS = 512 * 1024


def get_run(run_id):
    run = db.session.get(Deployment, run_id)
    if run is None:
        abort(404, description=f"Run {run_id} not found.")
    return run


@bp.get("")
def index():
    now = database_time()
    try:
        page = history.query_page(request.args, now=now)
    except history.FilterError as exc:
        flash(str(exc), "danger")
        page = history.Page(rows=[], next_before=None)
    rq_views = history.rq_states(page.rows)
    rows = [(run, history.health(run, now), rq_views.get(run.id)) for run in page.rows]
    args = request.args.copy()
    partial = args.poplist("partial") == ["rows"]
    context = {
        "rows": rows,
        "page": page,
        "args": args,
        "active": any(run.is_active for run in page.rows),
        "queue_reason": waits.queue_reason,
        "retry_summary": retry_summary,
    }
    # The page's script fetches the table alone to refresh it.
    if partial:
        return render_template("runs/_table.html", **context)
    playbook_dir = current_app.config["PLAYBOOK_DIR"]
    context["playbooks"] = [entry.path for entry in list_playbooks(playbook_dir)]
    context["targets"] = _target_names()
    return render_template("runs/index.html", **context)


def _target_names():
    targets = current_app.extensions["inventory"].targets()
    return [entry["name"] for entry in targets["groups"] + targets["hosts"]]


@bp.get("/<int:run_id>")
def detail(run_id):
    run = get_run(run_id)
    now = database_time()
    text, truncated = history.output_tail(run_id, INLINE_OUTPUT_CHARS)
    return render_template(
        "runs/detail.html",
        run=run,
        health=history.health(run, now),
        rq=history.rq_state(run),
        output=ansi.to_html(text),
        truncated=truncated,
        inline_limit=INLINE_OUTPUT_CHARS,
        last_chunk=history.last_chunk_id(run_id),
        queue_reason=waits.queue_reason(run) if run.status == "queued" else None,
        retry=retry_summary(run),
        attempts=list_attempts(run.id),
    )


@bp.get("/<int:run_id>/output.txt")
def download(run_id):
    run = get_run(run_id)
    attempt = request.args.get("attempt", type=int)
    chunks = history.iter_output(run.id, attempt=attempt)
    text = (ansi.strip(chunk) for chunk in chunks)
    name = f"run-{run.id}" + (f"-attempt-{attempt}" if attempt else "")
    return Response(
        stream_with_context(text),
        mimetype="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.txt"'},
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
    last_sent = time.monotonic()
    badge = get_template_attribute("_macros.html", "status_badge")
    yield "retry: 1000\n\n"
    while time.monotonic() < deadline:
        db.session.rollback()  # start a fresh read of the database
        run = db.session.get(Deployment, run_id, populate_existing=True)
        chunks = history.output_after(run_id, after)
        for chunk_id, text in chunks:
            after = chunk_id
            payload = json.dumps({"html": str(ansi.to_html(text))})
            yield f"id: {chunk_id}\nevent: output\ndata: {payload}\n\n"
            last_sent = time.monotonic()
        state = history.state_dict(run, database_time())
        state["badge"] = str(badge(run, state["health"]))
        # Ages change every poll; compare the rest to spot a real change.
        key = json.dumps(
            {k: v for k, v in state.items() if k not in ("duration", "health")}
            | {"stuck": state["health"]["stuck"]},
            sort_keys=True,
            default=str,
        )
        if key != last_state:
            last_state = key
            yield f"event: status\ndata: {json.dumps(state, default=str)}\n\n"
            last_sent = time.monotonic()
        if not run.is_active and not chunks:
            yield "event: end\ndata: {}\n\n"
            return
        if time.monotonic() - last_sent > STREAM_KEEPALIVE:
            # A comment line: lets the server notice a browser that went away.
            yield ": keepalive\n\n"
            last_sent = time.monotonic()
        if not chunks:
            time.sleep(STREAM_POLL)
    yield ": reconnect\n\n"


@bp.post("/<int:run_id>/cancel")
def cancel(run_id):
    run = get_run(run_id)
    if launch.cancel(run, requested_by=current_user.name):
        flash(f"Run {run.id} canceled.", "warning")
    else:
        flash(f"Run {run.id} had already ended.", "info")
    return redirect(url_for("runs.detail", run_id=run.id))


@bp.post("/<int:run_id>/relaunch")
def relaunch(run_id):
    run = get_run(run_id)
    try:
        new_run = launch.relaunch(
            run,
            launched_by=current_user.name,
            hosts=request.form.get("hosts", "all"),
        )
    except launch.LaunchError as exc:
        flash(str(exc), "danger")
        return redirect(url_for("runs.detail", run_id=run.id))
    flash(f"Run {new_run.id} queued again from run {run.id}.", "success")
    return redirect(url_for("runs.detail", run_id=new_run.id, launched=1))
