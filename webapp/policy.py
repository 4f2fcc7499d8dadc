"""Access control: one policy table checked before every request.

Each endpoint maps to an action and each action to the lowest role allowed
to take it. An endpoint missing from ``POLICY`` is open to admins only, so
a route added without an entry is safe until someone grants it. Modules
that add routes grant them with ``allow(endpoint, action)``.
"""

from flask import abort, jsonify, redirect, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFProtect

from . import auth
from .models import Role

PUBLIC = "public"

# The lowest role that may take each action.
ACTIONS = {
    "view": Role.VIEWER,
    "launch": Role.OPERATOR,
    "cancel": Role.OPERATOR,
    "relaunch": Role.OPERATOR,
    # Setting connection or privilege variables (ansible_user,
    # ansible_become...) and Jinja templates in extra vars.
    "override_vars": Role.ADMIN,
    "schedules": Role.ADMIN,
    "users": Role.ADMIN,
    "settings": Role.ADMIN,
    "audit": Role.ADMIN,
}
DEFAULT_ACTION = "settings"

POLICY = {
    "static": PUBLIC,
    "auth.login": PUBLIC,
    "auth.logout": "view",
    "auth.change_password": "view",
    "views.index": "view",
    "views.playbooks": "view",
    "views.targets": "view",
    "views.launch_form": "launch",
    "runs.index": "view",
    "runs.detail": "view",
    "runs.download": "view",
    "runs.events": "view",
    "runs.cancel": "cancel",
    "runs.relaunch": "relaunch",
    "api.list_deployments": "view",
    "api.get_deployment": "view",
    "api.get_output": "view",
    "api.playbooks": "view",
    "api.targets": "view",
    "api.create_deployment": "launch",
    "api.cancel_deployment": "cancel",
    "api.relaunch_deployment": "relaunch",
    "audit.index": "audit",
    "audit.api_list": "audit",
    # Monitoring systems scrape these without signing in; they contain
    # counts and names of playbooks, never output or variables.
    "admin.drain_status": "view",
    "monitoring.metrics": PUBLIC,
    "monitoring.healthz": PUBLIC,
    "schedules.index": "view",
    "schedules.detail": "view",
    "schedules.new": "schedules",
    "schedules.edit": "schedules",
    "schedules.pause": "schedules",
    "schedules.resume": "schedules",
    "schedules.delete": "schedules",
    "schedules_api.api_list": "view",
    "schedules_api.api_get": "view",
    "schedules_api.api_create": "schedules",
    "schedules_api.api_update": "schedules",
    "schedules_api.api_delete": "schedules",
    "users.index": "users",
    "users.create": "users",
    "users.detail": "users",
    "users.set_role": "users",
    "users.disable": "users",
    "users.enable": "users",
    "users.reset_password": "users",
    "users.create_token": "users",
    "users.revoke_token": "users",
    "users_api.api_list": "users",
    "users_api.api_create": "users",
    "users_api.api_update": "users",
}

csrf = CSRFProtect()


def allow(endpoint, action):
    """Grant ``endpoint`` to the roles that may take ``action``."""
    if action != PUBLIC and action not in ACTIONS:
        raise ValueError(f"Unknown action {action!r}: use one of {sorted(ACTIONS)}.")
    POLICY[endpoint] = action


def action_for(endpoint):
    return POLICY.get(endpoint, DEFAULT_ACTION)


def can(action, user=None):
    """Return True if ``user`` (default: the current user) may take ``action``."""
    user = current_user if user is None else user
    if action == PUBLIC:
        return True
    if not user.is_authenticated:
        return False
    return user.has_role(ACTIONS[action])


def wants_json():
    return request.path == "/api" or request.path.startswith("/api/")


def _deny(status, message):
    if wants_json():
        response = jsonify({"error": message, "message": message})
        response.status_code = status
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="shepherd"'
        return response
    if status == 401:
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    abort(status, description=message)


def check_request():
    """Authenticate the request, apply the policy table and check CSRF.

    Runs before every request. Requests authenticated by a bearer token
    skip the CSRF check, because a browser never adds that header to a
    cross-site request by itself. Every other POST, the sign-in form
    included, must send the CSRF token.
    """
    endpoint = request.endpoint
    if endpoint is None:
        return None  # no such route: Flask returns 404 or 405
    action = action_for(endpoint)
    if action == PUBLIC:
        csrf.protect()
        return None

    token = auth.bearer_token()
    if not current_user.is_authenticated:
        if token is not None:
            return _deny(401, "Invalid or revoked API token.")
        return _deny(401, "Sign in to continue.")
    if not can(action):
        return _deny(
            403,
            f"Your role {current_user.role!r} may not {action} here; "
            f"this needs the {ACTIONS[action].value} role.",
        )
    if not auth.authenticated_by_token():
        csrf.protect()
    return None


def init_app(app):
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # check_request calls protect()
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid for the session
    csrf.init_app(app)
    app.before_request(check_request)
    app.jinja_env.globals["can"] = can
