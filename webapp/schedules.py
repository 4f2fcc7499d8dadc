"""Schedule pages under /schedules and the JSON API under /api/schedules.

Both go through webapp.scheduling, so forms and API validate alike.
"""

from zoneinfo import available_timezones

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from sqlalchemy import select

from . import scheduling
from .api import error, launched_by
from .catalog import list_playbooks
from .extensions import db
from .models import Schedule

bp = Blueprint("schedules", __name__, url_prefix="/schedules")
api_bp = Blueprint("schedules_api", __name__, url_prefix="/api/schedules")


def _all_schedules():
    return db.session.scalars(select(Schedule).order_by(Schedule.name)).all()


# JSON API


def _get_or_404(schedule_id):
    schedule = db.session.get(Schedule, schedule_id)
    if schedule is None:
        return None, error(404, f"Schedule {schedule_id} not found.", schedule_id, "id")
    return schedule, None


@api_bp.get("")
def api_list():
    return jsonify(
        {"schedules": [scheduling.schedule_dict(s) for s in _all_schedules()]}
    )


@api_bp.post("")
def api_create():
    try:
        schedule = scheduling.create(
            request.get_json(silent=True), created_by=launched_by()
        )
    except scheduling.ScheduleError as exc:
        return error(exc.status, str(exc), exc.value, exc.field)
    return jsonify(scheduling.schedule_dict(schedule)), 201


@api_bp.get("/<int:schedule_id>")
def api_get(schedule_id):
    schedule, failure = _get_or_404(schedule_id)
    if failure:
        return failure
    return jsonify(scheduling.schedule_dict(schedule, with_history=True))


@api_bp.patch("/<int:schedule_id>")
def api_update(schedule_id):
    schedule, failure = _get_or_404(schedule_id)
    if failure:
        return failure
    try:
        scheduling.update(
            schedule, request.get_json(silent=True), changed_by=launched_by()
        )
    except scheduling.ScheduleError as exc:
        db.session.rollback()
        return error(exc.status, str(exc), exc.value, exc.field)
    return jsonify(scheduling.schedule_dict(schedule))


@api_bp.delete("/<int:schedule_id>")
def api_delete(schedule_id):
    schedule, failure = _get_or_404(schedule_id)
    if failure:
        return failure
    scheduling.delete(schedule, deleted_by=launched_by())
    return "", 204


# Pages


def _get_page_schedule(schedule_id):
    schedule = db.session.get(Schedule, schedule_id)
    if schedule is None:
        abort(404, description=f"Schedule {schedule_id} not found.")
    return schedule


def _form_context(form, schedule=None):
    return {
        "form": form,
        "schedule": schedule,
        "playbooks": list_playbooks(current_app.config["PLAYBOOK_DIR"]),
        "targets": current_app.extensions["inventory"].targets(),
        "timezones": sorted(available_timezones()),
    }


def _form_data(form):
    """Return the submitted form as API fields; an unticked checkbox is false."""
    data = {name: form.get(name) for name in scheduling.FIELDS if name != "paused"}
    data["paused"] = "paused" in form
    return data


@bp.get("")
def index():
    rows = []
    for schedule in _all_schedules():
        upcoming = [] if schedule.paused else scheduling.upcoming(schedule, 1)
        rows.append((schedule, upcoming[0] if upcoming else None))
    return render_template("schedules/index.html", rows=rows)


@bp.route("/new", methods=["GET", "POST"])
def new():
    if request.method == "GET":
        return render_template(
            "schedules/form.html", **_form_context({"timezone": "UTC"})
        )
    try:
        schedule = scheduling.create(
            _form_data(request.form), created_by=current_user.name
        )
    except scheduling.ScheduleError as exc:
        flash(str(exc), "danger")
        return render_template(
            "schedules/form.html", **_form_context(request.form)
        ), exc.status
    flash(f"Schedule {schedule.name!r} created.", "success")
    return redirect(url_for("schedules.detail", schedule_id=schedule.id))


@bp.route("/<int:schedule_id>/edit", methods=["GET", "POST"])
def edit(schedule_id):
    schedule = _get_page_schedule(schedule_id)
    if request.method == "GET":
        form = schedule.to_dict()
        form["extra_vars"] = _yaml(schedule.extra_vars)
        form["timeout"] = schedule.timeout or ""
        return render_template("schedules/form.html", **_form_context(form, schedule))
    try:
        scheduling.update(
            schedule,
            _form_data(request.form),
            changed_by=current_user.name,
        )
    except scheduling.ScheduleError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return render_template(
            "schedules/form.html", **_form_context(request.form, schedule)
        ), exc.status
    flash(f"Schedule {schedule.name!r} saved.", "success")
    return redirect(url_for("schedules.detail", schedule_id=schedule.id))


def _yaml(extra_vars):
    import yaml

    return yaml.safe_dump(extra_vars, sort_keys=False) if extra_vars else ""


@bp.get("/<int:schedule_id>")
def detail(schedule_id):
    schedule = _get_page_schedule(schedule_id)
    return render_template(
        "schedules/detail.html",
        schedule=schedule,
        upcoming=[] if schedule.paused else scheduling.upcoming(schedule),
        history=scheduling.history(schedule.id),
    )


@bp.post("/<int:schedule_id>/pause")
def pause(schedule_id):
    return _set_paused(schedule_id, True)


@bp.post("/<int:schedule_id>/resume")
def resume(schedule_id):
    return _set_paused(schedule_id, False)


def _set_paused(schedule_id, paused):
    schedule = _get_page_schedule(schedule_id)
    scheduling.update(schedule, {"paused": paused}, changed_by=current_user.name)
    flash(
        f"Schedule {schedule.name!r} {'paused' if paused else 'resumed'}.",
        "warning" if paused else "success",
    )
    return redirect(url_for("schedules.detail", schedule_id=schedule.id))


@bp.post("/<int:schedule_id>/delete")
def delete(schedule_id):
    schedule = _get_page_schedule(schedule_id)
    name = schedule.name
    scheduling.delete(schedule, deleted_by=current_user.name)
    flash(f"Schedule {name!r} deleted; its runs stay in the history.", "warning")
    return redirect(url_for("schedules.index"))
