"""Authentication: password sign-in with sessions, API bearer tokens, login limits.

Pages use a Flask-Login session cookie; the JSON API also accepts
``Authorization: Bearer <token>``. A request that carries that header is
judged by the token alone, never by a cookie sent along with it. What each
user may do is decided in webapp.policy.
"""

import hashlib
import logging
import re
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, current_user, login_user, logout_user
from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from . import audit
from .extensions import db
from .models import ApiToken, AuditEvent, Role, User, utcnow

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)
login_manager = LoginManager()

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
TOKEN_PREFIX = "shp_"
MIN_PASSWORD_LENGTH = 10
# Checked when the user name is unknown, so that a failed sign-in takes as
# long whether or not the name exists.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


class AccountError(ValueError):
    """An account change is invalid or not allowed.

    ``field`` and ``value`` name the culprit; ``status`` is the HTTP status
    for the API: 400 for invalid input, 409 for a conflict with the stored
    accounts (a taken name, the last active admin).
    """

    def __init__(self, message, field=None, value=None, status=400):
        super().__init__(message)
        self.field = field
        self.value = value
        self.status = status


def init_app(app):
    login_manager.init_app(app)
    app.register_blueprint(bp)


# Users and passwords.


def validate_name(name):
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise AccountError(
            f"Invalid user name {name!r}: use 1 to 64 letters, digits, '.', '_', "
            "'-' or '@', starting with a letter or digit.",
            "name",
            name,
        )
    return name


def validate_role(role):
    try:
        return Role(role).value
    except ValueError:
        raise AccountError(
            f"Invalid role {role!r}: use one of {', '.join(r.value for r in Role)}.",
            "role",
            role,
        ) from None


def validate_password(password):
    if not isinstance(password, str):
        raise AccountError(
            f"Invalid password of type {type(password).__name__}: send text of at "
            f"least {MIN_PASSWORD_LENGTH} characters.",
            "password",
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"The password is too short: use at least {MIN_PASSWORD_LENGTH} characters.",
            "password",
        )
    return password


def find_user(name):
    return db.session.scalar(select(User).where(User.name == name))


def create_user(name, role, password=None):
    """Insert a user and return it; raises AccountError if the name is taken."""
    validate_name(name)
    role = validate_role(role)
    if find_user(name) is not None:
        raise AccountError(f"User {name!r} already exists.", "name", name, 409)
    user = User(name=name, role=role)
    if password is not None:
        user.password_hash = generate_password_hash(validate_password(password))
    db.session.add(user)
    db.session.commit()
    return user


def set_password(user, password):
    user.password_hash = generate_password_hash(validate_password(password))
    db.session.commit()


def check_password(user, password):
    if user is None or not user.password_hash:
        check_password_hash(_DUMMY_HASH, password)
        return False
    return check_password_hash(user.password_hash, password)


# API tokens.


def _digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(user, label=None):
    """Store a new token for ``user`` and return (row, token text).

    The text is returned this once: only its SHA-256 digest is stored.
    """
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id,
        token_hash=_digest(token),
        prefix=token[: len(TOKEN_PREFIX) + 6],
        label=label,
    )
    db.session.add(row)
    db.session.commit()
    return row, token


# Maximum age of a token's last_used_at before a request writes it again.
# A write on every request would make each API read a write transaction,
# which on SQLite takes the one write lock that heartbeats and output
# copies need.
TOKEN_USE_PRECISION = timedelta(minutes=1)


def bearer_token():
    """Return the token of an ``Authorization: Bearer`` header, '' if malformed,
    or None without such a header."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


def user_for_token(token):
    """Return the active user that owns ``token``, or None."""
    if not token:
        return None
    row = db.session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == _digest(token), ApiToken.revoked_at.is_(None)
        )
    )
    if row is None:
        return None
    user = db.session.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > TOKEN_USE_PRECISION:
        row.last_used_at = now
        db.session.commit()
    return user


@login_manager.user_loader
def _load_session_user(user_id):
    if bearer_token() is not None:
        return None  # the Authorization header decides, not the cookie
    number, _, fingerprint = str(user_id).partition(":")
    try:
        user = db.session.get(User, int(number))
    except ValueError:
        return None
    if user is None or not user.is_active:
        return None
    if fingerprint != user.password_fingerprint:
        return None  # the password changed after this session began
    return user


@login_manager.request_loader
def _load_token_user(request):
    user = user_for_token(bearer_token())
    if user is not None:
        g.auth_method = "token"
    return user


def authenticated_by_token():
    return getattr(g, "auth_method", None) == "token"


# Sign-in limits. Failures are counted in the audit log in SQL, so every
# gunicorn worker reads the same counts.


def login_blocked(name, address):
    """Return True when too many sign-ins failed recently for this name or address."""
    config = current_app.config
    since = utcnow() - timedelta(seconds=config["LOGIN_FAILURE_WINDOW"])
    failures = select(func.count()).where(
        AuditEvent.action == "login.failure", AuditEvent.at >= since
    )
    for_pair = db.session.scalar(
        failures.where(AuditEvent.target == name, AuditEvent.address == address)
    )
    if for_pair >= config["LOGIN_MAX_FAILURES"]:
        return True
    for_address = db.session.scalar(failures.where(AuditEvent.address == address))
    return for_address >= config["LOGIN_MAX_FAILURES_PER_ADDRESS"]


def _safe_next(target):
    """Return ``target`` if it is a path on this site, else the dashboard."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return url_for("views.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target:
        return url_for("views.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    next_url = request.values.get("next", "")
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(_safe_next(next_url))
        return render_template("auth/login.html", next_url=next_url)

    name = (request.form.get("username") or "").strip()[:64]
    password = request.form.get("password") or ""
    address = request.remote_addr
    if login_blocked(name, address):
        audit.record("login.blocked", name, {"reason": "too many failures"})
        flash(
            "Too many failed sign-ins from this address. Wait a few minutes "
            "and try again.",
            "danger",
        )
        return render_template("auth/login.html", next_url=next_url, name=name), 429

    user = find_user(name)
    if not check_password(user, password) or not user.is_active:
        audit.record("login.failure", name, {"reason": "invalid credentials"})
        logger.info("sign-in failed for %r from %s", name, address)
        flash("Invalid user name or password.", "danger")
        return render_template("auth/login.html", next_url=next_url, name=name), 401

    session.clear()  # a fresh session: no state carried over from before sign-in
    session.permanent = True
    login_user(user)
    user.last_login_at = utcnow()
    db.session.commit()
    audit.record("login.success", name, {"role": user.role}, actor=user.name)
    return redirect(_safe_next(next_url))


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        audit.record("logout", current_user.name)
    logout_user()
    session.clear()
    flash("Signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
def change_password():
    """Let a signed-in user change their own password.

    The current password is required, so a session left open is not enough
    to take over the account. The change ends the user's other sessions,
    and this one continues under the new password.
    """
    if authenticated_by_token():
        abort(403, description="Change a password in the browser, not with a token.")
    if request.method == "GET":
        return render_template("auth/password.html")

    from . import accounts  # imported here because accounts imports this module

    user = current_user._get_current_object()
    current = request.form.get("current_password") or ""
    new = request.form.get("new_password") or ""
    again = request.form.get("new_password_again") or ""
    if login_blocked(user.name, request.remote_addr):
        flash("Too many wrong passwords. Wait a few minutes and try again.", "danger")
        return render_template("auth/password.html"), 429
    problem = None
    if not check_password(user, current):
        # Counted with failed sign-ins, so guesses here meet the same limits.
        audit.record(
            "login.failure", user.name, {"reason": "wrong password on password change"}
        )
        problem = "The current password is wrong."
    elif new != again:
        problem = "The new password and its repetition differ: type the same twice."
    elif new == current:
        problem = "The new password is the current one: choose another."
    if problem is None:
        try:
            accounts.set_password(user, new, actor=user.name)
        except AccountError as exc:
            problem = str(exc)
    if problem is not None:
        flash(problem, "danger")
        return render_template("auth/password.html"), 400

    login_user(user)  # the session id carries the new password's fingerprint
    flash("Password changed. Your other sessions are signed out.", "success")
    return redirect(url_for("views.index"))
