"""The role x route table: anonymous users see only the login page, each role
can take exactly its actions, and routes missing from the policy are admin-only."""

import re

import pytest

from webapp import policy

ROLES = ["anonymous", "viewer", "operator", "admin"]
RANK = {role: index for index, role in enumerate(ROLES)}

# (method, path, lowest role allowed). {run} is an ended run, {active} a queued one.
ROUTES = [
    ("GET", "/", "viewer"),
    ("GET", "/playbooks", "viewer"),
    ("GET", "/targets", "viewer"),
    ("GET", "/runs", "viewer"),
    ("GET", "/runs/{run}", "viewer"),
    ("GET", "/runs/{run}/output.txt", "viewer"),
    ("GET", "/runs/{run}/events", "viewer"),
    ("GET", "/launch", "operator"),
    ("POST", "/launch", "operator"),
    ("POST", "/runs/{active}/cancel", "operator"),
    ("POST", "/runs/{run}/relaunch", "operator"),
    ("GET", "/audit", "admin"),
    ("GET", "/api/deployments", "viewer"),
    ("GET", "/api/deployments/{run}", "viewer"),
    ("GET", "/api/deployments/{run}/output", "viewer"),
    ("GET", "/api/playbooks", "viewer"),
    ("GET", "/api/targets", "viewer"),
    ("POST", "/api/deployments", "operator"),
    ("POST", "/api/deployments/{active}/cancel", "operator"),
    ("POST", "/api/deployments/{run}/relaunch", "operator"),
    ("GET", "/api/audit", "admin"),
    ("GET", "/users", "admin"),
    ("POST", "/users", "admin"),
    ("GET", "/api/users", "admin"),
    ("POST", "/api/users", "admin"),
]
LAUNCH = {"playbook": "ping.yml", "target": "localhost"}


@pytest.fixture
def clients(app, client, anon_client, client_as):
    return {
        "anonymous": anon_client,
        "viewer": client_as("viewer"),
        "operator": client_as("operator"),
        "admin": client,
    }


def make_run(client, cancel):
    run = client.post("/api/deployments", json=LAUNCH).get_json()
    if cancel:
        client.post(f"/api/deployments/{run['id']}/cancel")
    return run["id"]


def request_as(client, method, path):
    if method == "GET":
        response = client.get(path)
    elif path.startswith("/api/deployments") and path.endswith("deployments"):
        response = client.post(path, json=LAUNCH)
    else:
        response = client.post(path, data=LAUNCH)
    response.get_data()  # read streamed bodies to the end
    return response


@pytest.mark.parametrize("role", ROLES)
def test_role_route_table(client, clients, role):
    for method, path, lowest in ROUTES:
        url = path.format(
            run=make_run(client, cancel=True), active=make_run(client, cancel=False)
        )

        response = request_as(clients[role], method, url)

        allowed = RANK[role] >= RANK[lowest]
        where = f"{role} {method} {url}"
        if allowed:
            assert response.status_code not in (401, 403), where
            assert "/login" not in response.headers.get("Location", ""), where
        elif role == "anonymous" and url.startswith("/api/"):
            assert response.status_code == 401, where
        elif role == "anonymous":
            assert response.status_code == 302, where
            assert response.headers["Location"].startswith("/login"), where
        else:
            assert response.status_code == 403, where


def test_policy_table_names_real_routes(app):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}

    unknown = set(policy.POLICY) - endpoints

    assert unknown == set()


def test_anonymous_sees_only_login(app, anon_client):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:int:)?[a-z_]+>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = anon_client.open(path, method=method)
            if policy.action_for(rule.endpoint) == policy.PUBLIC:
                assert response.status_code != 401, (method, path)
                continue
            if rule.endpoint == "auth.login":
                assert response.status_code in (200, 400), (method, path)
                continue
            assert response.status_code in (302, 401), (method, path)
            if response.status_code == 302:
                assert response.headers["Location"].startswith("/login")


def test_unlisted_route_is_admin_only(app, clients):
    app.add_url_rule("/added-later", "later.page", lambda: "hidden")
    app.add_url_rule("/api/added-later", "later.api", lambda: {"ok": True})

    assert clients["admin"].get("/added-later").status_code == 200
    assert clients["admin"].get("/api/added-later").status_code == 200
    for role in ("viewer", "operator"):
        assert clients[role].get("/added-later").status_code == 403
        assert clients[role].get("/api/added-later").status_code == 403
    assert clients["anonymous"].get("/added-later").status_code == 302
    assert clients["anonymous"].get("/api/added-later").status_code == 401


def test_allow_grants_route(app, clients, monkeypatch):
    monkeypatch.setattr(policy, "POLICY", dict(policy.POLICY))
    app.add_url_rule("/granted", "later.granted", lambda: "granted")

    policy.allow("later.granted", "view")

    assert clients["viewer"].get("/granted").status_code == 200
    with pytest.raises(ValueError, match="Unknown action 'fly'"):
        policy.allow("later.granted", "fly")


def test_forbidden_api_error_is_json(clients):
    response = clients["viewer"].post("/api/deployments", json=LAUNCH)

    assert response.status_code == 403
    assert "operator role" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("role", "visible", "hidden"),
    [
        (
            "viewer",
            ["History", 'data-user="viewer"'],
            [
                'href="/launch"',
                'id="cancel-button"',
                'id="relaunch-button"',
                "/audit",
                'href="/users"',
            ],
        ),
        (
            "operator",
            ['href="/launch"', 'id="cancel-button"', 'id="relaunch-button"'],
            ['href="/audit"', 'href="/users"'],
        ),
        (
            "admin",
            ['href="/launch"', 'id="cancel-button"', 'href="/audit"', 'href="/users"'],
            [],
        ),
    ],
)
def test_ui_hides_what_role_cannot_do(client, clients, role, visible, hidden):
    active = make_run(client, cancel=False)

    html = clients[role].get(f"/runs/{active}").get_data(as_text=True)

    for fragment in visible:
        assert fragment in html, fragment
    for fragment in hidden:
        assert fragment not in html, fragment


def test_playbooks_page_hides_launch_for_viewer(clients):
    viewer = clients["viewer"].get("/playbooks").get_data(as_text=True)
    operator = clients["operator"].get("/playbooks").get_data(as_text=True)

    assert "/launch?playbook=" not in viewer
    assert "/launch?playbook=" in operator
