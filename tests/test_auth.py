"""Signing in and out, session cookies, CSRF, API tokens and sign-in limits."""

import re
from datetime import timedelta

import pytest
from conftest import TEST_PASSWORD, create_user, token_client

from webapp import auth
from webapp.extensions import db
from webapp.models import ApiToken, AuditEvent, utcnow


def csrf_token(client, path="/login"):
    html = client.get(path, follow_redirects=True).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, name, password=TEST_PASSWORD, next_url=""):
    return client.post(
        "/login",
        data={
            "username": name,
            "password": password,
            "csrf_token": csrf_token(client),
            "next": next_url,
        },
    )


def audit_actions(app):
    with app.app_context():
        return [
            (e.action, e.target, e.actor, e.address)
            for e in db.session.scalars(db.select(AuditEvent).order_by(AuditEvent.id))
        ]


def test_login_page_has_form(anon_client):
    response = anon_client.get("/login")

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'id="login-form"' in html
    assert 'name="csrf_token"' in html


def test_login_sets_session_and_audits(app, anon_client):
    create_user(app, "alice", "operator")

    response = sign_in(anon_client, "alice")

    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    page = anon_client.get("/").get_data(as_text=True)
    assert 'data-user="alice"' in page
    assert ("login.success", "alice", "alice", "127.0.0.1") in audit_actions(app)


def test_login_cookie_secure_when_configured(app, anon_client):
    create_user(app, "alice", "viewer")
    app.config["SESSION_COOKIE_SECURE"] = True

    response = sign_in(anon_client, "alice")

    assert "Secure" in response.headers["Set-Cookie"]


def test_login_cookie_secure_over_https(app):
    create_user(app, "alice", "viewer")
    client = app.test_client()
    token = csrf_token(client)
    # Flask-WTF checks the Referer of HTTPS form posts.
    response = client.post(
        "/login",
        base_url="https://localhost",
        headers={"Referer": "https://localhost/login"},
        data={"username": "alice", "password": TEST_PASSWORD, "csrf_token": token},
    )

    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(
    ("name", "password"),
    [("alice", "wrong password!"), ("nobody", TEST_PASSWORD), ("", "")],
)
def test_login_rejects_bad_credentials(app, anon_client, name, password):
    create_user(app, "alice", "admin")

    response = sign_in(anon_client, name, password)

    assert response.status_code == 401
    assert "Invalid user name or password" in response.get_data(as_text=True)
    assert anon_client.get("/").status_code == 302
    assert ("login.failure", name, "system", "127.0.0.1") in audit_actions(app)


def test_login_rejects_disabled_user(app, anon_client):
    create_user(app, "alice", "admin")
    with app.app_context():
        auth.find_user("alice").disabled = True
        db.session.commit()

    assert sign_in(anon_client, "alice").status_code == 401


def test_login_without_csrf_token_rejected(app, anon_client):
    create_user(app, "alice", "admin")

    response = anon_client.post(
        "/login", data={"username": "alice", "password": TEST_PASSWORD}
    )

    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    assert anon_client.get("/").status_code == 302


def test_login_redirects_only_to_local_paths(app, anon_client):
    create_user(app, "alice", "admin")

    for next_url, expected in [
        ("/runs?status=failed", "/runs?status=failed"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
    ]:
        anon_client.post("/logout", data={"csrf_token": csrf_token(anon_client)})
        response = sign_in(anon_client, "alice", next_url=next_url)
        assert response.headers["Location"] == expected, next_url


def test_login_rate_limited_per_name_and_address(app, anon_client):
    create_user(app, "alice", "admin")
    app.config["LOGIN_MAX_FAILURES"] = 3

    for _ in range(3):
        assert sign_in(anon_client, "alice", "wrong password!").status_code == 401
    blocked = sign_in(anon_client, "alice")

    assert blocked.status_code == 429
    assert "Too many failed sign-ins" in blocked.get_data(as_text=True)
    assert anon_client.get("/").status_code == 302
    assert ("login.blocked", "alice", "system", "127.0.0.1") in audit_actions(app)
    # Another address is not blocked for the same name.
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "127.0.0.2"
    assert sign_in(other, "alice").status_code == 302


def test_login_rate_limited_per_address(app, anon_client):
    create_user(app, "alice", "admin")
    app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"] = 4

    for index in range(4):
        sign_in(anon_client, f"guess{index}", "wrong password!")

    assert sign_in(anon_client, "alice").status_code == 429


def test_login_failures_expire_after_window(app, anon_client):
    create_user(app, "alice", "admin")
    app.config["LOGIN_MAX_FAILURES"] = 2
    for _ in range(2):
        sign_in(anon_client, "alice", "wrong password!")
    with app.app_context():
        for event in db.session.scalars(db.select(AuditEvent)):
            event.at = utcnow().replace(year=2000)
        db.session.commit()

    assert sign_in(anon_client, "alice").status_code == 302


def test_logout_ends_session(app, anon_client):
    create_user(app, "alice", "admin")
    sign_in(anon_client, "alice")
    token = csrf_token(anon_client, "/")

    response = anon_client.post("/logout", data={"csrf_token": token})

    assert response.status_code == 302
    assert anon_client.get("/").status_code == 302
    assert ("logout", "alice", "alice", "127.0.0.1") in audit_actions(app)


def test_logout_requires_csrf(app, anon_client):
    create_user(app, "alice", "admin")
    sign_in(anon_client, "alice")

    assert anon_client.post("/logout").status_code == 400
    assert anon_client.get("/").status_code == 200


def test_session_form_post_requires_csrf(app, anon_client):
    create_user(app, "alice", "operator")
    sign_in(anon_client, "alice")

    response = anon_client.post(
        "/launch", data={"playbook": "ping.yml", "target": "localhost"}
    )

    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)


def test_session_api_post_requires_csrf(app, anon_client):
    create_user(app, "alice", "operator")
    sign_in(anon_client, "alice")

    response = anon_client.post("/api/deployments", json={"playbook": "ping.yml"})

    assert response.status_code == 400
    assert "CSRF" in response.get_json()["error"]


def test_bearer_token_authenticates_api(app, anon_client):
    client = token_client(app, "robot", "viewer")

    assert client.get("/api/deployments").status_code == 200
    assert anon_client.get("/api/deployments").status_code == 401
    with app.app_context():
        row = db.session.scalar(db.select(ApiToken))
        assert row.last_used_at is not None
        assert row.token_hash != client.token
        assert client.token not in row.token_hash


def test_token_last_use_written_once_a_minute(app):
    client = token_client(app, "poller", "viewer")
    assert client.get("/api/deployments").status_code == 200
    with app.app_context():
        first = db.session.scalar(db.select(ApiToken.last_used_at))

    assert client.get("/api/deployments").status_code == 200
    with app.app_context():
        assert db.session.scalar(db.select(ApiToken.last_used_at)) == first
        row = db.session.scalar(db.select(ApiToken))
        row.last_used_at = first - timedelta(minutes=2)
        db.session.commit()

    assert client.get("/api/deployments").status_code == 200
    with app.app_context():
        assert db.session.scalar(db.select(ApiToken.last_used_at)) > first


@pytest.mark.parametrize(
    "header",
    ["Bearer shp_not-a-real-token", "Bearer ", "Basic YWRtaW46YWRtaW4=", "Bearer"],
)
def test_bad_bearer_token_rejected(app, anon_client, header):
    response = anon_client.get("/api/deployments", headers={"Authorization": header})

    assert response.status_code == 401
    assert "Invalid or revoked API token" in response.get_json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_token_rejected(app):
    client = token_client(app, "robot", "viewer")
    with app.app_context():
        db.session.scalar(db.select(ApiToken)).revoked_at = utcnow()
        db.session.commit()

    assert client.get("/api/deployments").status_code == 401


def test_bad_token_not_rescued_by_session_cookie(app, anon_client):
    create_user(app, "alice", "admin")
    sign_in(anon_client, "alice")

    response = anon_client.get(
        "/api/deployments", headers={"Authorization": "Bearer shp_wrong"}
    )

    assert response.status_code == 401


def test_anonymous_page_redirects_to_login(anon_client):
    response = anon_client.get("/runs?status=failed")

    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/runs?status%3Dfailed"


def test_password_change_ends_sessions(app, anon_client):
    create_user(app, "alice", "admin")
    sign_in(anon_client, "alice")
    assert anon_client.get("/").status_code == 200

    with app.app_context():
        auth.set_password(auth.find_user("alice"), "a brand new password")

    assert anon_client.get("/").status_code == 302


def test_disabled_user_session_ends(app, anon_client):
    create_user(app, "alice", "admin")
    sign_in(anon_client, "alice")

    with app.app_context():
        auth.find_user("alice").disabled = True
        db.session.commit()

    assert anon_client.get("/").status_code == 302


def change_password(client, current, new, again=None):
    return client.post(
        "/account/password",
        data={
            "current_password": current,
            "new_password": new,
            "new_password_again": new if again is None else again,
            "csrf_token": csrf_token(client, "/account/password"),
        },
    )


def test_own_password_change_keeps_this_session(app, anon_client):
    create_user(app, "alice", "viewer")
    other = app.test_client()
    sign_in(anon_client, "alice")
    sign_in(other, "alice")

    response = change_password(anon_client, TEST_PASSWORD, "a brand new password")

    assert response.status_code == 302
    assert anon_client.get("/").status_code == 200
    assert other.get("/").status_code == 302
    with app.app_context():
        user = auth.find_user("alice")
        assert auth.check_password(user, "a brand new password")
    assert ("user.set_password", "alice", "alice", "127.0.0.1") in audit_actions(app)


@pytest.mark.parametrize(
    ("current", "new", "again", "message"),
    [
        ("wrong password", "a brand new password", None, "current password is wrong"),
        (TEST_PASSWORD, "a brand new password", "another one!!", "differ"),
        (TEST_PASSWORD, "short", None, "too short"),
        (TEST_PASSWORD, TEST_PASSWORD, None, "is the current one"),
    ],
)
def test_own_password_change_rejects(app, anon_client, current, new, again, message):
    create_user(app, "alice", "viewer")
    sign_in(anon_client, "alice")

    response = change_password(anon_client, current, new, again)

    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert auth.check_password(auth.find_user("alice"), TEST_PASSWORD)


def test_own_password_change_needs_csrf_and_session(app, anon_client, client):
    create_user(app, "alice", "viewer")
    sign_in(anon_client, "alice")
    response = anon_client.post(
        "/account/password",
        data={
            "current_password": TEST_PASSWORD,
            "new_password": "a brand new password",
            "new_password_again": "a brand new password",
        },
    )
    assert response.status_code == 400
    assert app.test_client().get("/account/password").status_code == 302
    assert client.get("/account/password").status_code == 403


def test_own_password_change_rate_limited(app, anon_client):
    create_user(app, "alice", "viewer")
    sign_in(anon_client, "alice")
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        assert change_password(anon_client, "wrong guess", "x" * 12).status_code == 400

    response = change_password(anon_client, TEST_PASSWORD, "a brand new password")

    assert response.status_code == 429
    with app.app_context():
        assert auth.check_password(auth.find_user("alice"), TEST_PASSWORD)
