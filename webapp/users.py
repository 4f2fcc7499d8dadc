"""The Users page under /users and the JSON API under /api/users (admins only).

Both go through webapp.accounts, like the users and tokens CLI commands, so
every path validates, guards the last active admin and writes the audit log
alike. Generated passwords and new tokens appear once, in the response to
the request that made them, and are stored only as hashes.
"""

from flask import (
    Blueprint,
    abort,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)

from . import accounts
from .api import error
from .auth import AccountError
from .extensions import db
from .models import ApiToken, Role, User

bp = Blueprint("users", __name__, url_prefix="/users")
api_bp = Blueprint("users_api", __name__, url_prefix="/api/users")

PATCH_FIELDS = ("role", "disabled")


def user_dict(user, active_tokens=None):
    body = user.to_dict()
    if active_tokens is not None:
        body["active_tokens"] = active_tokens
    return body


# JSON API


def _api_error(exc):
    return error(exc.status, str(exc), exc.value, exc.field)


@api_bp.get("")
def api_list():
    rows = accounts.users_with_token_counts()
    return jsonify({"users": [user_dict(user, tokens) for user, tokens in rows]})


@api_bp.post("")
def api_create():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error(
            400,
            'The request body must be a JSON object such as {"name": "alice", '
            '"role": "operator"}; without "password" one is generated.',
        )
    unknown = sorted(set(body) - {"name", "role", "password"})
    if unknown:
        return error(
            400,
            f"Unknown field {unknown[0]!r}: send name, role and optionally password.",
            unknown[0],
            unknown[0],
        )
    try:
        user, generated = accounts.create(
            body.get("name"), body.get("role", Role.VIEWER.value), body.get("password")
        )
    except AccountError as exc:
        return _api_error(exc)
    response = user_dict(user, 0)
    if generated is not None:
        response["generated_password"] = generated
    return _no_store(jsonify(response)), 201


@api_bp.patch("/<int:user_id>")
def api_update(user_id):
    user = db.session.get(User, user_id)
    if user is None:
        return error(404, f"User {user_id} not found.", user_id, "id")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body:
        return error(
            400,
            'The request body must be a JSON object with "role", "disabled" or '
            'both, such as {"role": "operator"} or {"disabled": true}.',
        )
    unknown = sorted(set(body) - set(PATCH_FIELDS))
    if unknown:
        return error(
            400,
            f"Unknown field {unknown[0]!r}: only role and disabled can be changed "
            "here; passwords and tokens are set on the Users page or with the CLI.",
            unknown[0],
            unknown[0],
        )
    try:
        # An explicit null is an invalid value, not "leave unchanged".
        for field in PATCH_FIELDS:
            if field in body and body[field] is None:
                raise AccountError(
                    f"Invalid {field} null: send a value or leave the field out.",
                    field,
                )
        accounts.update(user, role=body.get("role"), disabled=body.get("disabled"))
    except AccountError as exc:
        db.session.rollback()
        return _api_error(exc)
    return jsonify(user_dict(user))


# Pages


def _page_user(user_id):
    user = db.session.get(User, user_id)
    if user is None:
        abort(404, description=f"User {user_id} not found.")
    return user


def _no_store(response):
    """Keep a response that shows a password or token out of caches."""
    response.headers["Cache-Control"] = "no-store"
    return response


def _show_secret(user, kind, secret, status=200):
    page = render_template("users/secret.html", user=user, kind=kind, secret=secret)
    return _no_store(make_response(page, status))


def _render_index(form=None, status=200):
    return render_template(
        "users/index.html",
        rows=accounts.users_with_token_counts(),
        roles=[role.value for role in Role],
        form=form or {"role": Role.VIEWER.value},
    ), status


@bp.get("")
def index():
    return _render_index()


@bp.post("")
def create():
    form = request.form
    name = form.get("name", "")
    password = form.get("password", "")
    confirmation = form.get("password_confirm", "")
    try:
        if password or confirmation:
            accounts.validate_confirmation(password, confirmation)
        user, generated = accounts.create(name, form.get("role", ""), password or None)
    except AccountError as exc:
        flash(str(exc), "danger")
        return _render_index({"name": name, "role": form.get("role")}, exc.status)
    if generated is not None:
        return _show_secret(user, "password", generated, 201)
    flash(f"Created user {user.name} with role {user.role}.", "success")
    return redirect(url_for("users.detail", user_id=user.id))


@bp.get("/<int:user_id>")
def detail(user_id):
    user = _page_user(user_id)
    return render_template(
        "users/detail.html",
        user=user,
        tokens=accounts.tokens_of(user),
        roles=[role.value for role in Role],
    )


def _change(user, **changes):
    """Apply a role or disabled change from a form; flash the outcome."""
    try:
        before = accounts.update(user, **changes)
    except AccountError as exc:
        db.session.rollback()
        flash(str(exc), "danger")
        return False
    if "role" in changes:
        flash(
            f"User {user.name} now has role {user.role} (was {before['role']}).",
            "success",
        )
    else:
        state = "disabled" if user.disabled else "enabled"
        flash(f"User {user.name} is {state}.", "success")
    return True


@bp.post("/<int:user_id>/role")
def set_role(user_id):
    user = _page_user(user_id)
    _change(user, role=request.form.get("role", ""))
    return redirect(url_for("users.detail", user_id=user.id))


@bp.post("/<int:user_id>/disable")
def disable(user_id):
    user = _page_user(user_id)
    _change(user, disabled=True)
    return redirect(url_for("users.detail", user_id=user.id))


@bp.post("/<int:user_id>/enable")
def enable(user_id):
    user = _page_user(user_id)
    _change(user, disabled=False)
    return redirect(url_for("users.detail", user_id=user.id))


@bp.post("/<int:user_id>/password")
def reset_password(user_id):
    user = _page_user(user_id)
    password = accounts.reset_password(user)
    return _show_secret(user, "password", password)


@bp.post("/<int:user_id>/tokens")
def create_token(user_id):
    user = _page_user(user_id)
    try:
        _, token = accounts.issue_token(user, request.form.get("label"))
    except AccountError as exc:
        flash(str(exc), "danger")
        return redirect(url_for("users.detail", user_id=user.id))
    return _show_secret(user, "token", token, 201)


@bp.post("/<int:user_id>/tokens/<int:token_id>/revoke")
def revoke_token(user_id, token_id):
    user = _page_user(user_id)
    row = db.session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        abort(404, description=f"Token {token_id} of user {user.name} not found.")
    if accounts.revoke_token(row):
        flash(f"Token {row.id} ({row.prefix}...) is revoked.", "success")
    else:
        flash(f"Token {row.id} ({row.prefix}...) was already revoked.", "info")
    return redirect(url_for("users.detail", user_id=user.id))
