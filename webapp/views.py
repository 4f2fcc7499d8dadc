"""Pages for people: dashboard, launch form, playbooks and targets."""

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user

from jobs import drain, leases

from . import dashboard, launch
from .catalog import list_playbooks

bp = Blueprint("views", __name__)


@bp.get("/")
def index():
    return render_template(
        "views/dashboard.html", summary=dashboard.summary(), drain=drain.status()
    )


@bp.route("/launch", methods=["GET", "POST"])
def launch_form():
    playbooks = list_playbooks(current_app.config["PLAYBOOK_DIR"])
    targets = current_app.extensions["inventory"].targets()
    form = request.form if request.method == "POST" else request.args
    if request.method == "POST":
        try:
            run = launch.launch(
                form.get("playbook"),
                form.get("target"),
                form.get("extra_vars"),
                "check" in form,
                form.get("timeout"),
                launched_by=current_user.name,
            )
        except launch.LaunchError as exc:
            flash(str(exc), "danger")
            return render_template(
                "views/launch.html", playbooks=playbooks, targets=targets, form=form
            ), exc.status
        flash(f"Run {run.id} queued: {run.playbook} on {run.target}.", "success")
        return redirect(url_for("runs.detail", run_id=run.id, launched=1))
    return render_template(
        "views/launch.html", playbooks=playbooks, targets=targets, form=form
    )


@bp.get("/playbooks")
def playbooks():
    entries = list_playbooks(current_app.config["PLAYBOOK_DIR"])
    return render_template("views/playbooks.html", playbooks=entries)


@bp.get("/targets")
def targets():
    return render_template(
        "views/targets.html",
        targets=current_app.extensions["inventory"].targets(),
        leases={lease["host"]: lease for lease in leases.current()},
    )
