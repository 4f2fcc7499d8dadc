"""The audit log: who launched, canceled, changed or signed in, when and from where.

Call ``record(action, target, detail)`` after an action has taken effect.
Admins read the log on the Audit page and through ``GET /api/audit``.
"""

import logging

from flask import Blueprint, has_request_context, jsonify, render_template, request
from flask_login import current_user
from sqlalchemy import select

from .extensions import db
from .models import AuditEvent

logger = logging.getLogger(__name__)

bp = Blueprint("audit", __name__)

MAX_LIMIT = 500


def current_actor():
    """Return the signed-in user's name, or "system" outside a user's request."""
    if has_request_context() and current_user.is_authenticated:
        return current_user.name
    return "system"


def record(action, target=None, detail=None, *, actor=None):
    """Insert and commit one audit event; return it.

    ``action`` is a dotted verb such as ``launch`` or ``schedule.update``,
    ``target`` what it acted on (a run id, a user name), ``detail`` a
    JSON-serialisable dict. Never pass secret values in ``detail``.
    """
    address = request.remote_addr if has_request_context() else None
    event = AuditEvent(
        actor=(actor or current_actor())[:255],
        address=address,
        action=action,
        target=None if target is None else str(target)[:255],
        detail=detail,
    )
    db.session.add(event)
    db.session.commit()
    # DEBUG: the table is the record, and CLI output must stay clean.
    logger.debug(
        "audit: %s %s %s from %s", event.actor, action, event.target, address or "-"
    )
    return event


class AuditFilterError(ValueError):
    def __init__(self, message, field, value):
        super().__init__(message)
        self.field = field
        self.value = value


def query_events(args, limit_default=100):
    """Return (events newest first, next_before) filtered by action, actor, before."""
    query = select(AuditEvent)
    if args.get("action"):
        query = query.where(AuditEvent.action == args["action"])
    if args.get("actor"):
        query = query.where(AuditEvent.actor == args["actor"])
    for name in ("before", "limit"):
        raw = args.get(name)
        if raw and not raw.isdigit():
            raise AuditFilterError(
                f"Invalid {name} {raw!r}: give a positive whole number.", name, raw
            )
    if args.get("before"):
        query = query.where(AuditEvent.id < int(args["before"]))
    limit = int(args.get("limit") or limit_default)
    if not 1 <= limit <= MAX_LIMIT:
        raise AuditFilterError(
            f"Invalid limit {limit}: give a number from 1 to {MAX_LIMIT}.",
            "limit",
            limit,
        )
    rows = db.session.scalars(
        query.order_by(AuditEvent.id.desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


@bp.get("/audit")
def index():
    try:
        events, next_before = query_events(request.args)
    except AuditFilterError as exc:
        return render_template(
            "audit/index.html",
            events=[],
            next_before=None,
            args=request.args,
            error=str(exc),
        ), 400
    return render_template(
        "audit/index.html", events=events, next_before=next_before, args=request.args
    )


@bp.get("/api/audit")
def api_list():
    try:
        events, next_before = query_events(request.args)
    except AuditFilterError as exc:
        body = {"error": str(exc), "message": str(exc), "field": exc.field}
        body["value"] = exc.value
        return jsonify(body), 400
    return jsonify(
        {"events": [e.to_dict() for e in events], "next_before": next_before}
    )
