"""Account changes shared by the users CLI, the Users page and /api/users.

Every function here checks its input with the validators of webapp.auth,
applies the change, commits it and records it in the audit log. ``actor``
is the name written to the log: "cli" from the command line, the signed-in
user by default. Invalid input and rejected changes raise
``auth.AccountError`` with nothing saved.
"""

import logging
import secrets

from flask import has_request_context
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from . import audit, auth
from .extensions import db
from .models import ApiToken, Role, User, utcnow

logger = logging.getLogger(__name__)

AccountError = auth.AccountError

# Bytes of randomness in a generated password: 16 URL-safe characters.
GENERATED_PASSWORD_BYTES = 12
MAX_TOKEN_LABEL_LENGTH = 255


def generate_password():
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def validate_confirmation(password, confirmation):
    """Check a password typed twice in a form; return it."""
    if password != confirmation:
        raise AccountError(
            "The two passwords differ: type the same password in both fields.",
            "password_confirm",
        )
    return auth.validate_password(password)


def create(name, role, password=None, *, actor=None):
    """Create a user; return (user, generated password or None).

    Without ``password`` a random one is generated, and returned this once.
    """
    auth.validate_name(name)
    role = auth.validate_role(role)
    generated = None
    if password is None:
        generated = password = generate_password()
    auth.validate_password(password)
    try:
        user = auth.create_user(name, role, password)
    except IntegrityError:
        # Another request created the same name after the existence check.
        db.session.rollback()
        raise AccountError(
            f"User {name!r} already exists.", "name", name, 409
        ) from None
    detail = {"role": user.role, "password": "generated" if generated else "chosen"}
    audit.record("user.create", user.name, detail, actor=actor)
    return user, generated


def update(user, *, role=None, disabled=None, actor=None):
    """Change the role and the disabled flag of ``user`` in one transaction.

    ``None`` leaves a field as it is. Rejects disabling oneself, and any
    change that would leave no active admin.
    """
    if role is not None:
        role = auth.validate_role(role)
    if disabled is not None and not isinstance(disabled, bool):
        raise AccountError(
            f"Invalid disabled value {disabled!r}: send true or false.",
            "disabled",
            disabled,
        )
    if disabled and _is_current_user(user):
        logger.info("rejected: user %r tried to disable their own account", user.name)
        raise AccountError(
            f"You cannot disable your own account {user.name!r}: another admin "
            "must do it.",
            "disabled",
            disabled,
            409,
        )
    before = {"role": user.role, "disabled": user.disabled}
    was_active_admin = _is_active_admin(user)
    if was_active_admin:
        _lock_active_admins()
    if role is not None:
        user.role = role
    if disabled is not None:
        user.disabled = disabled
    if was_active_admin and not _is_active_admin(user):
        _require_an_active_admin(user, "disabled" if user.disabled else "role")
    db.session.commit()

    if role is not None:
        audit.record(
            "user.set_role",
            user.name,
            {"before": before["role"], "after": role},
            actor=actor,
        )
    if disabled is not None:
        audit.record(
            "user.disable" if disabled else "user.enable", user.name, actor=actor
        )
    return before


def set_password(user, password, *, actor=None):
    """Set a chosen password. It ends the user's sessions, whose ids carry a
    fingerprint of the password hash (see User.get_id)."""
    auth.set_password(user, password)
    audit.record("user.set_password", user.name, {"password": "chosen"}, actor=actor)


def reset_password(user, *, actor=None):
    """Set a generated password and return it; it ends the user's sessions."""
    password = generate_password()
    auth.set_password(user, password)
    audit.record("user.set_password", user.name, {"password": "generated"}, actor=actor)
    return password


def issue_token(user, label=None, *, actor=None):
    """Create an API token acting as ``user``; return (row, token text).

    Only the token's digest is stored, so the text must be shown now.
    """
    label = _validate_label(label)
    row, token = auth.create_token(user, label)
    audit.record("token.create", user.name, {"token_id": row.id}, actor=actor)
    return row, token


def revoke_token(row, *, actor=None):
    """Revoke the token ``row``; revoking a revoked token changes nothing."""
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    db.session.commit()
    owner = db.session.get(User, row.user_id)
    audit.record(
        "token.revoke",
        str(row.id),
        {"user": owner.name if owner else None},
        actor=actor,
    )
    return True


def users_with_token_counts():
    """Return [(user, number of unrevoked tokens)] ordered by name."""
    counts = (
        select(ApiToken.user_id, func.count().label("tokens"))
        .where(ApiToken.revoked_at.is_(None))
        .group_by(ApiToken.user_id)
        .subquery()
    )
    rows = db.session.execute(
        select(User, func.coalesce(counts.c.tokens, 0))
        .outerjoin(counts, counts.c.user_id == User.id)
        .order_by(User.name)
    ).all()
    return [(user, tokens) for user, tokens in rows]


def tokens_of(user):
    """Return the user's tokens, revoked ones included, newest first."""
    return db.session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())
    ).all()


def _validate_label(label):
    if label is None:
        return None
    if not isinstance(label, str):
        raise AccountError(
            f"Invalid label {label!r}: give text saying what the token is for.",
            "label",
            label,
        )
    label = label.strip()
    if len(label) > MAX_TOKEN_LABEL_LENGTH:
        raise AccountError(
            f"The label is {len(label)} characters; the limit is "
            f"{MAX_TOKEN_LABEL_LENGTH}.",
            "label",
        )
    return label or None


def _is_active_admin(user):
    return user.role == Role.ADMIN.value and not user.disabled


def _is_current_user(user):
    return (
        has_request_context()
        and current_user.is_authenticated
        and current_user.id == user.id
    )


def _active_admins():
    return select(User.id).where(
        User.role == Role.ADMIN.value, User.disabled.is_(False)
    )


def _lock_active_admins():
    """Lock the active admins' rows until the commit.

    On PostgreSQL this makes concurrent demotions wait for each other, so
    two requests cannot each remove a different last-but-one admin.
    SQLAlchemy sends no FOR UPDATE to SQLite, whose single write lock,
    taken by the UPDATE before _require_an_active_admin counts, does the
    same.
    """
    db.session.scalars(_active_admins().with_for_update()).all()


def _require_an_active_admin(user, field):
    db.session.flush()
    remaining = db.session.scalar(
        select(func.count()).select_from(_active_admins().subquery())
    )
    if remaining:
        return
    db.session.rollback()
    logger.info("rejected a %s change of %r, the last active admin", field, user.name)
    raise AccountError(
        f"User {user.name!r} is the last active admin: make another user an "
        "admin first, then change this one.",
        field,
        user.name,
        409,
    )
