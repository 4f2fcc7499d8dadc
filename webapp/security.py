"""Browser-facing hardening: cookie flags, security headers and error pages.

Error responses never contain a traceback: pages get a short HTML page,
paths under /api get ``{"error": ..., "message": ...}``. Flask logs an
unhandled exception, and the client gets a generic 500 error.
"""

import json
from datetime import timedelta

from flask import jsonify, render_template, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from .policy import wants_json

# Scripts and styles come only from /static: no inline script, no eval.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: Flask-WTF rejects HTTPS form posts without a Referer.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class SessionInterface(SecureCookieSessionInterface):
    """Flask's cookie session, marked Secure on HTTPS requests even when
    SESSION_COOKIE_SECURE is off."""

    def get_cookie_secure(self, app):
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)


def add_headers(response):
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def handle_http_error(exc):
    if wants_json():
        body = {"error": exc.description, "message": exc.description}
        response = jsonify(body)
        response.status_code = exc.code
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response
    return render_template("error.html", error=exc), exc.code


def json_text(value):
    """Return ``value`` as JSON text for HTML, where autoescaping then escapes it.

    Jinja's ``tojson`` is meant for scripts and shows ``<`` as ``\\u003c``.
    """
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def init_app(app):
    app.jinja_env.filters["json_text"] = json_text
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(
        hours=app.config["SESSION_LIFETIME_HOURS"]
    )
    app.session_interface = SessionInterface()
    proxies = app.config["PROXY_COUNT"]
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)
    app.after_request(add_headers)
    app.register_error_handler(HTTPException, handle_http_error)
