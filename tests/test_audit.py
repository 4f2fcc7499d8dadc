"""The audit log: launches, cancels and relaunches with who, when and from where."""

import re

from conftest import TEST_PASSWORD, create_user

from webapp import audit
from webapp.extensions import db
from webapp.models import AuditEvent

LAUNCH = {"playbook": "ping.yml", "target": "localhost"}


def events(app, action=None):
    with app.app_context():
        query = db.select(AuditEvent).order_by(AuditEvent.id)
        if action:
            query = query.where(AuditEvent.action == action)
        return [e.to_dict() for e in db.session.scalars(query)]


def test_api_launch_cancel_relaunch_audited(app, client_as):
    operator = client_as("operator")

    run = operator.post("/api/deployments", json=LAUNCH).get_json()
    operator.post(f"/api/deployments/{run['id']}/cancel")
    again = operator.post(f"/api/deployments/{run['id']}/relaunch").get_json()

    assert run["launched_by"] == "operator"
    assert again["launched_by"] == "operator"
    launch, cancel, relaunch = (
        events(app, "launch")[0],
        events(app, "cancel")[0],
        events(app, "relaunch")[0],
    )
    assert launch["actor"] == "operator"
    assert launch["address"] == "127.0.0.1"
    assert launch["target"] == f"run {run['id']}"
    assert launch["detail"]["playbook"] == "ping.yml"
    assert launch["detail"]["target"] == "localhost"
    assert launch["at"]
    assert cancel["actor"] == "operator"
    assert cancel["target"] == f"run {run['id']}"
    assert cancel["detail"] == {"status_before": "queued"}
    assert relaunch["target"] == f"run {again['id']}"
    assert relaunch["detail"]["relaunch_of"] == run["id"]


def test_form_launch_records_signed_in_user(app, anon_client):
    create_user(app, "carol", "operator")
    login_page = anon_client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', login_page).group(1)
    anon_client.post(
        "/login",
        data={"username": "carol", "password": TEST_PASSWORD, "csrf_token": token},
    )
    form = anon_client.get("/launch").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)

    response = anon_client.post("/launch", data={**LAUNCH, "csrf_token": token})

    assert response.status_code == 302
    run_page = anon_client.get(response.headers["Location"]).get_data(as_text=True)
    assert ">carol (manual)</dd>" in run_page
    assert events(app, "launch")[0]["actor"] == "carol"


def test_record_outside_request_is_system(app):
    with app.app_context():
        event = audit.record("schedule.update", "schedule 3", {"cron": "0 * * * *"})

        assert event.actor == "system"
        assert event.address is None
        assert event.detail == {"cron": "0 * * * *"}


def test_api_audit_lists_filters_and_pages(app, client):
    for _ in range(3):
        client.post("/api/deployments", json=LAUNCH)
    with app.app_context():
        audit.record("login.failure", "mallory", actor="system")

    everything = client.get("/api/audit").get_json()
    launches = client.get("/api/audit?action=launch&limit=2").get_json()
    rest = client.get(
        f"/api/audit?action=launch&limit=2&before={launches['next_before']}"
    ).get_json()

    assert [e["action"] for e in everything["events"]] == ["login.failure"] + [
        "launch"
    ] * 3
    assert len(launches["events"]) == 2
    assert len(rest["events"]) == 1
    assert rest["next_before"] is None
    assert client.get("/api/audit?actor=admin").get_json()["events"][0]["actor"] == (
        "admin"
    )


def test_api_audit_rejects_bad_filters(client):
    for query in ("limit=0", "limit=abc", "before=-1", "limit=100000"):
        response = client.get(f"/api/audit?{query}")
        assert response.status_code == 400, query
        assert response.get_json()["field"] in ("limit", "before")


def test_audit_page_shows_events(client):
    client.post("/api/deployments", json=LAUNCH)

    html = client.get("/audit").get_data(as_text=True)

    assert 'id="audit"' in html
    assert "<td>launch</td>" in html
    assert "<td>admin</td>" in html
    assert "127.0.0.1" in html
