"""The Users page and /api/users: admin only, audited, validated, and never
leaving Shepherd without an active admin."""

import re

import pytest
from conftest import TEST_PASSWORD, create_user, token_client

from webapp import auth
from webapp.extensions import db
from webapp.models import ApiToken, AuditEvent, User

PASSWORD = "a long enough password"


def csrf_token(client, path="/login"):
    html = client.get(path, follow_redirects=True).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, name, password=TEST_PASSWORD):
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": csrf_token(client)},
    )


def session_client(app, name="boss", role="admin", password=TEST_PASSWORD):
    """Return a test client signed in through the login form."""
    create_user(app, name, role, password)
    client = app.test_client()
    assert sign_in(client, name, password).status_code == 302
    return client


def post_form(client, path, data=None):
    """Post a form with the CSRF token of the Users page."""
    token = csrf_token(client, "/users")
    return client.post(path, data={**(data or {}), "csrf_token": token})


def user_id(app, name):
    with app.app_context():
        return auth.find_user(name).id


def user_state(app, name):
    with app.app_context():
        user = auth.find_user(name)
        return None if user is None else (user.role, user.disabled)


def audit_rows(app, *actions):
    with app.app_context():
        query = db.select(AuditEvent).order_by(AuditEvent.id)
        if actions:
            query = query.where(AuditEvent.action.in_(actions))
        return [
            (e.action, e.target, e.actor, e.address, e.detail)
            for e in db.session.scalars(query)
        ]


def user_count(app):
    with app.app_context():
        return db.session.scalar(db.select(db.func.count()).select_from(User))


def secret_of(response):
    html = response.get_data(as_text=True)
    return re.search(r'id="secret" data-kind="\w+">([^<]+)<', html).group(1)


# JSON API


def test_api_create_list_patch(app, client):
    created = client.post(
        "/api/users", json={"name": "alice", "role": "operator", "password": PASSWORD}
    )
    listing = client.get("/api/users")
    demoted = client.patch(
        f"/api/users/{created.get_json()['id']}", json={"role": "viewer"}
    )
    disabled = client.patch(
        f"/api/users/{created.get_json()['id']}", json={"disabled": True}
    )

    assert created.status_code == 201, created.get_json()
    assert created.get_json()["role"] == "operator"
    assert "generated_password" not in created.get_json()
    rows = {row["name"]: row for row in listing.get_json()["users"]}
    assert rows["alice"]["role"] == "operator"
    assert rows["alice"]["disabled"] is False
    assert rows["alice"]["active_tokens"] == 0
    assert rows["alice"]["last_login_at"] is None
    assert rows["admin"]["active_tokens"] == 1
    assert demoted.status_code == 200
    assert demoted.get_json()["role"] == "viewer"
    assert disabled.status_code == 200
    assert disabled.get_json()["disabled"] is True
    assert user_state(app, "alice") == ("viewer", True)
    assert audit_rows(app, "user.create", "user.set_role", "user.disable") == [
        (
            "user.create",
            "alice",
            "admin",
            "127.0.0.1",
            {"role": "operator", "password": "chosen"},
        ),
        (
            "user.set_role",
            "alice",
            "admin",
            "127.0.0.1",
            {"before": "operator", "after": "viewer"},
        ),
        ("user.disable", "alice", "admin", "127.0.0.1", None),
    ]


def test_api_generated_password_signs_in(app, client):
    response = client.post("/api/users", json={"name": "bob"})

    body = response.get_json()
    assert response.status_code == 201
    assert body["role"] == "viewer"
    assert response.headers["Cache-Control"] == "no-store"
    assert len(body["generated_password"]) >= auth.MIN_PASSWORD_LENGTH
    assert (
        sign_in(app.test_client(), "bob", body["generated_password"]).status_code == 302
    )
    assert body["generated_password"] not in str(audit_rows(app))


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"name": "bad name"}, "name", "Invalid user name 'bad name'"),
        ({"name": ""}, "name", "Invalid user name ''"),
        ({"name": "-x"}, "name", "Invalid user name '-x'"),
        ({"name": "x" * 65}, "name", "Invalid user name"),
        ({"name": 5}, "name", "Invalid user name 5"),
        ({}, "name", "Invalid user name None"),
        ({"name": "carol", "role": "root"}, "role", "Invalid role 'root'"),
        ({"name": "carol", "role": ["admin"]}, "role", "Invalid role ['admin']"),
        ({"name": "carol", "password": "short"}, "password", "too short"),
        ({"name": "carol", "password": 12345678901}, "password", "type int"),
        ({"name": "carol", "admin": True}, "admin", "Unknown field 'admin'"),
    ],
)
def test_api_create_rejects_bad_input(app, client, body, field, message):
    before = user_count(app)

    response = client.post("/api/users", json=body)

    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert response.get_json()["field"] == field
    assert user_count(app) == before
    assert audit_rows(app, "user.create") == []


def test_api_create_rejects_non_object(app, client):
    response = client.post("/api/users", json=["alice"])

    assert response.status_code == 400
    assert "JSON object" in response.get_json()["error"]


def test_api_create_rejects_taken_name(app, client):
    client.post("/api/users", json={"name": "alice", "password": PASSWORD})

    response = client.post("/api/users", json={"name": "alice", "role": "admin"})

    assert response.status_code == 409
    assert "User 'alice' already exists" in response.get_json()["error"]
    assert user_state(app, "alice") == ("viewer", False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"role": "root"}, "Invalid role 'root'"),
        ({"role": None}, "Invalid role null"),
        ({"disabled": "yes"}, "Invalid disabled value 'yes'"),
        ({"disabled": 1}, "Invalid disabled value 1"),
        ({"role": "viewer", "disabled": "maybe"}, "Invalid disabled value 'maybe'"),
        ({"name": "mallory"}, "Unknown field 'name'"),
        ({"password": PASSWORD}, "Unknown field 'password'"),
        ({}, "JSON object"),
    ],
)
def test_api_patch_rejects_bad_input(app, client, body, message):
    create_user(app, "alice", "operator")

    response = client.patch(f"/api/users/{user_id(app, 'alice')}", json=body)

    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert user_state(app, "alice") == ("operator", False)
    assert audit_rows(app, "user.set_role", "user.disable") == []


def test_api_patch_unknown_user(client):
    response = client.patch("/api/users/999", json={"role": "viewer"})

    assert response.status_code == 404
    assert "User 999 not found" in response.get_json()["error"]


# Roles


PROTECTED = [
    ("GET", "/users"),
    ("POST", "/users"),
    ("GET", "/users/{id}"),
    ("POST", "/users/{id}/role"),
    ("POST", "/users/{id}/disable"),
    ("POST", "/users/{id}/enable"),
    ("POST", "/users/{id}/password"),
    ("POST", "/users/{id}/tokens"),
    ("POST", "/users/{id}/tokens/1/revoke"),
    ("GET", "/api/users"),
    ("POST", "/api/users"),
    ("PATCH", "/api/users/{id}"),
]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_users_routes_forbidden_below_admin(app, client_as, role):
    caller = client_as(role)
    target = user_id(app, create_user(app, "alice", "viewer"))

    for method, path in PROTECTED:
        url = path.format(id=target)
        response = caller.open(
            url, method=method, json={"role": "admin", "name": "eve"}
        )
        assert response.status_code == 403, (method, url)
    assert user_state(app, "alice") == ("viewer", False)
    assert user_state(app, "eve") is None


def test_users_routes_need_sign_in(app, anon_client):
    target = user_id(app, create_user(app, "alice", "viewer"))

    for method, path in PROTECTED:
        url = path.format(id=target)
        response = anon_client.open(url, method=method, json={"role": "admin"})
        if url.startswith("/api/"):
            assert response.status_code == 401, (method, url)
        else:
            assert response.status_code == 302, (method, url)
            assert response.headers["Location"].startswith("/login"), (method, url)
    assert user_state(app, "alice") == ("viewer", False)


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_users_link_hidden_below_admin(client, client_as, role):
    html = client_as(role).get("/").get_data(as_text=True)
    admin_html = client.get("/").get_data(as_text=True)

    assert 'href="/users"' not in html
    assert 'href="/users"' in admin_html


# The last active admin


def test_last_admin_cannot_demote_self(app, client):
    response = client.patch(
        f"/api/users/{user_id(app, 'admin')}", json={"role": "viewer"}
    )

    assert response.status_code == 409
    assert "'admin' is the last active admin" in response.get_json()["error"]
    assert user_state(app, "admin") == ("admin", False)
    assert audit_rows(app, "user.set_role") == []


def test_admin_cannot_disable_self(app, client):
    create_user(app, "other-admin", "admin")

    response = client.patch(
        f"/api/users/{user_id(app, 'admin')}", json={"disabled": True}
    )

    assert response.status_code == 409
    assert "cannot disable your own account 'admin'" in response.get_json()["error"]
    assert user_state(app, "admin") == ("admin", False)


def test_admin_may_demote_self_beside_another(app, client):
    create_user(app, "other-admin", "admin")

    response = client.patch(
        f"/api/users/{user_id(app, 'admin')}", json={"role": "operator"}
    )

    assert response.status_code == 200
    assert user_state(app, "admin") == ("operator", False)
    # The token now acts with the new role.
    assert client.get("/api/users").status_code == 403


def test_disabled_admin_does_not_count(app, client):
    create_user(app, "old-admin", "admin")
    other = user_id(app, "old-admin")
    assert (
        client.patch(f"/api/users/{other}", json={"disabled": True}).status_code == 200
    )

    response = client.patch(
        f"/api/users/{user_id(app, 'admin')}", json={"role": "viewer"}
    )

    assert response.status_code == 409
    assert user_state(app, "admin") == ("admin", False)


def test_guard_counts_admins_at_write(app, client):
    from webapp import accounts

    create_user(app, "second", "admin")
    with app.app_context():
        # Loaded while two admins are active; another request then demotes
        # the other one before this change is written.
        admin = auth.find_user("admin")
        demoted = client.patch(
            f"/api/users/{user_id(app, 'second')}", json={"role": "operator"}
        )
        with pytest.raises(auth.AccountError, match="last active admin"):
            accounts.update(admin, role="viewer", actor="test")

    assert demoted.status_code == 200
    assert user_state(app, "admin") == ("admin", False)


def test_cli_refuses_to_remove_last_admin(app, runner):
    create_user(app, "root", "admin")

    demoted = runner.invoke(args=["users", "set-role", "root", "viewer"])
    disabled = runner.invoke(args=["users", "disable", "root"])

    assert demoted.exit_code == 1
    assert "'root' is the last active admin" in demoted.output
    assert disabled.exit_code == 1
    assert "'root' is the last active admin" in disabled.output
    assert user_state(app, "root") == ("admin", False)
    assert audit_rows(app, "user.set_role", "user.disable") == []


def test_page_refuses_self_disable(app):
    admin = session_client(app)
    create_user(app, "other-admin", "admin")

    response = post_form(admin, f"/users/{user_id(app, 'boss')}/disable")

    assert response.status_code == 302
    page = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert "You cannot disable your own account &#39;boss&#39;" in page
    assert user_state(app, "boss") == ("admin", False)


# Pages


def test_page_lists_users(app, client):
    create_user(app, "alice", "operator")
    token_client(app, "robot", "viewer")
    client.patch(f"/api/users/{user_id(app, 'alice')}", json={"disabled": True})

    html = client.get("/users").get_data(as_text=True)

    alice = re.search(r'<tr data-account="alice">.*?</tr>', html, re.S).group(0)
    robot = re.search(r'<tr data-account="robot">.*?</tr>', html, re.S).group(0)
    assert 'data-role="operator"' in alice
    assert 'data-state="disabled"' in alice
    assert 'data-tokens="0"' in alice
    assert "never" in alice
    assert 'data-state="active"' in robot
    assert 'data-tokens="1"' in robot


def test_page_create_with_typed_password(app):
    admin = session_client(app)

    response = post_form(
        admin,
        "/users",
        {
            "name": "carol",
            "role": "operator",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
        },
    )

    assert response.status_code == 302
    assert response.headers["Location"] == f"/users/{user_id(app, 'carol')}"
    assert user_state(app, "carol") == ("operator", False)
    assert sign_in(app.test_client(), "carol", PASSWORD).status_code == 302
    assert audit_rows(app, "user.create") == [
        (
            "user.create",
            "carol",
            "boss",
            "127.0.0.1",
            {"role": "operator", "password": "chosen"},
        )
    ]


def test_page_generated_password_signs_in(app):
    admin = session_client(app)

    response = post_form(admin, "/users", {"name": "dave", "role": "viewer"})

    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    password = secret_of(response)
    dave = app.test_client()
    assert sign_in(dave, "dave", password).status_code == 302
    assert 'data-user="dave"' in dave.get("/").get_data(as_text=True)
    assert password not in admin.get("/users/" + str(user_id(app, "dave"))).get_data(
        as_text=True
    )


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (
            {"name": "bad name", "role": "viewer"},
            "Invalid user name &#39;bad name&#39;: use 1 to 64 letters",
        ),
        ({"name": "erin", "role": "root"}, "Invalid role &#39;root&#39;: use one of"),
        (
            {"name": "erin", "role": "viewer", "password": PASSWORD},
            "The two passwords differ: type the same password in both fields.",
        ),
        (
            {
                "name": "erin",
                "role": "viewer",
                "password": PASSWORD,
                "password_confirm": PASSWORD + "!",
            },
            "The two passwords differ",
        ),
        (
            {
                "name": "erin",
                "role": "viewer",
                "password": "short",
                "password_confirm": "short",
            },
            "The password is too short: use at least 10 characters.",
        ),
    ],
)
def test_page_create_rejects_bad_input(app, form, message):
    admin = session_client(app)
    before = user_count(app)

    response = post_form(admin, "/users", form)

    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert message in html
    assert 'id="new-user-form"' in html
    assert user_count(app) == before
    assert audit_rows(app, "user.create") == []
    assert PASSWORD not in html


def test_page_forms_reject_missing_csrf(app):
    admin = session_client(app)
    target = user_id(app, create_user(app, "alice", "viewer"))

    created = admin.post("/users", data={"name": "mallory", "role": "admin"})
    promoted = admin.post(f"/users/{target}/role", data={"role": "admin"})
    disabled = admin.post(f"/users/{target}/disable")
    patched = admin.patch(f"/api/users/{target}", json={"role": "admin"})

    for response in (created, promoted, disabled, patched):
        assert response.status_code == 400
        assert "CSRF" in response.get_data(as_text=True)
    assert user_state(app, "mallory") is None
    assert user_state(app, "alice") == ("viewer", False)


def test_page_role_disable_enable_audited(app):
    admin = session_client(app)
    target = user_id(app, create_user(app, "alice", "viewer"))

    promoted = post_form(admin, f"/users/{target}/role", {"role": "operator"})
    detail = admin.get(f"/users/{target}").get_data(as_text=True)
    disabled = post_form(admin, f"/users/{target}/disable")
    state_disabled = user_state(app, "alice")
    enabled = post_form(admin, f"/users/{target}/enable")

    for response in (promoted, disabled, enabled):
        assert response.status_code == 302
        assert response.headers["Location"] == f"/users/{target}"
    assert "User alice now has role operator (was viewer)." in detail
    assert state_disabled == ("operator", True)
    assert user_state(app, "alice") == ("operator", False)
    assert audit_rows(app, "user.set_role", "user.disable", "user.enable") == [
        (
            "user.set_role",
            "alice",
            "boss",
            "127.0.0.1",
            {"before": "viewer", "after": "operator"},
        ),
        ("user.disable", "alice", "boss", "127.0.0.1", None),
        ("user.enable", "alice", "boss", "127.0.0.1", None),
    ]


def test_page_bad_role_saves_nothing(app):
    admin = session_client(app)
    target = user_id(app, create_user(app, "alice", "viewer"))

    response = post_form(admin, f"/users/{target}/role", {"role": "superuser"})

    page = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert (
        "Invalid role &#39;superuser&#39;: use one of viewer, operator, admin." in page
    )
    assert user_state(app, "alice") == ("viewer", False)
    assert audit_rows(app, "user.set_role") == []


def test_page_reset_password_ends_sessions(app):
    admin = session_client(app)
    alice = session_client(app, "alice", "operator")
    assert alice.get("/").status_code == 200

    response = post_form(admin, f"/users/{user_id(app, 'alice')}/password")

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    password = secret_of(response)
    assert alice.get("/").status_code == 302
    assert sign_in(app.test_client(), "alice", TEST_PASSWORD).status_code == 401
    assert sign_in(app.test_client(), "alice", password).status_code == 302
    rows = audit_rows(app, "user.set_password")
    assert rows == [
        ("user.set_password", "alice", "boss", "127.0.0.1", {"password": "generated"})
    ]


def test_page_token_create_and_revoke(app, anon_client):
    admin = session_client(app)
    target = user_id(app, create_user(app, "robot", "viewer"))

    created = post_form(admin, f"/users/{target}/tokens", {"label": "ci"})
    token = secret_of(created)
    headers = {"Authorization": f"Bearer {token}"}
    used = anon_client.get("/api/deployments", headers=headers)
    detail = admin.get(f"/users/{target}").get_data(as_text=True)
    with app.app_context():
        row = db.session.scalar(db.select(ApiToken).where(ApiToken.user_id == target))
        token_id, stored = row.id, (row.token_hash, row.prefix, row.label)
    revoked = post_form(admin, f"/users/{target}/tokens/{token_id}/revoke")
    listing = admin.get("/users").get_data(as_text=True)

    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    assert token.startswith("shp_")
    assert used.status_code == 200
    assert token not in stored
    assert stored[2] == "ci"
    assert token not in detail
    assert f"{stored[1]}..." in detail
    assert revoked.status_code == 302
    assert anon_client.get("/api/deployments", headers=headers).status_code == 401
    robot = re.search(r'<tr data-account="robot">.*?</tr>', listing, re.S).group(0)
    assert 'data-tokens="0"' in robot
    assert audit_rows(app, "token.create", "token.revoke") == [
        ("token.create", "robot", "boss", "127.0.0.1", {"token_id": token_id}),
        ("token.revoke", str(token_id), "boss", "127.0.0.1", {"user": "robot"}),
    ]


def test_page_revoke_checks_token_owner(app, client):
    robot = token_client(app, "robot", "viewer")
    other = user_id(app, create_user(app, "alice", "viewer"))
    with app.app_context():
        token_id = db.session.scalar(
            db.select(ApiToken.id).where(ApiToken.user_id == user_id(app, "robot"))
        )

    response = client.post(f"/users/{other}/tokens/{token_id}/revoke")

    assert response.status_code == 404
    assert robot.get("/api/deployments").status_code == 200


def test_page_token_label_too_long(app, client):
    target = user_id(app, create_user(app, "robot", "viewer"))

    response = client.post(f"/users/{target}/tokens", data={"label": "x" * 256})

    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "The label is 256 characters; the limit is 255." in page
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(ApiToken)) == 1


# Disabled users


def test_disabled_user_token_and_session_rejected(app, client):
    robot = token_client(app, "robot", "operator")
    browser = session_client(app, "robot", "operator")
    target = user_id(app, "robot")
    assert robot.get("/api/deployments").status_code == 200

    client.patch(f"/api/users/{target}", json={"disabled": True})

    assert robot.get("/api/deployments").status_code == 401
    assert browser.get("/").status_code == 302
    client.patch(f"/api/users/{target}", json={"disabled": False})
    assert robot.get("/api/deployments").status_code == 200
