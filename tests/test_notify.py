"""Notifications: webhook and email deliveries through a real worker, retries, routes.

A local HTTP receiver and an aiosmtpd SMTP sink on 127.0.0.1 stand in for the
chat service and the mail server.
"""

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from conftest import free_port, launch, token_client, wait_for, wait_status
from sqlalchemy import select

from jobs import notify, state
from webapp.extensions import db
from webapp.models import Deployment, NotificationDelivery, RunStatus, utcnow


class Receiver:
    """An HTTP server on 127.0.0.1 that stores every JSON body POSTed to it."""

    def __init__(self, status=200):
        self.bodies = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(
                    {"path": self.path, "body": json.loads(self.rfile.read(length))}
                )
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Sink:
    """aiosmtpd handler that keeps every message it receives."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            {
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "data": envelope.content.decode(errors="replace"),
            }
        )
        return "250 OK"


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def smtp_sink():
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield sink, controller.port
    controller.stop()


@pytest.fixture
def notify_env(shepherd_env, receiver, smtp_sink, monkeypatch):
    _, port = smtp_sink
    values = {
        "NOTIFY_WEBHOOK_URL": f"{receiver.url}/global",
        "NOTIFY_EMAIL_TO": "ops@example.org",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port),
        "NOTIFY_RETRY_INTERVALS": "1,1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
        shepherd_env[key] = value
    return shepherd_env


def deliveries(client, **params):
    response = client.get("/api/notifications", query_string=params)
    assert response.status_code == 200
    return response.get_json()["deliveries"]


def make_run(status=RunStatus.RUNNING, playbook="ping.yml", **fields):
    run = Deployment(
        playbook=playbook,
        target="localhost",
        timeout=60,
        status=status.value,
        extra_vars={},
        started_at=fields.pop("started_at", utcnow()),
        **fields,
    )
    db.session.add(run)
    db.session.commit()
    return run.id


def test_failed_run_sends_webhook_and_email(
    notify_env, app, client, processes, receiver, smtp_sink
):
    sink, _ = smtp_sink
    processes.worker()

    run = launch(client, "fail.yml")
    wait_status(client, run["id"], "failed")

    wait_for(lambda: receiver.bodies, 30, message="the webhook call")
    wait_for(lambda: sink.messages, 30, message="the email")
    body = receiver.bodies[0]["body"]
    assert receiver.bodies[0]["path"] == "/global"
    assert body["event"] == "run_failed"
    assert body["run"]["id"] == run["id"]
    assert body["run"]["status"] == "failed"
    assert "fail.yml" in body["text"]
    assert sink.messages[0]["to"] == ["ops@example.org"]
    assert f"Subject: Shepherd: run {run['id']} (fail.yml" in sink.messages[0]["data"]

    def all_sent():
        rows = deliveries(client)
        return len(rows) == 2 and all(d["status"] == "sent" for d in rows) and rows

    rows = wait_for(all_sent, 30, message="both deliveries marked sent")
    assert {d["channel"] for d in rows} == {"webhook", "email"}
    assert all(d["run_id"] == run["id"] for d in rows)
    assert len(receiver.bodies) == 1


def test_successful_run_sends_nothing(notify_env, app, client, processes, receiver):
    processes.worker()

    run = launch(client, "ping.yml")
    wait_status(client, run["id"], "successful")

    assert deliveries(client) == []
    assert receiver.bodies == []


def test_failed_delivery_recorded_after_retries(notify_env, monkeypatch, processes):
    dead_port = free_port()
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", f"http://127.0.0.1:{dead_port}/hook")
    monkeypatch.setenv("NOTIFY_EMAIL_TO", "")
    notify_env["NOTIFY_WEBHOOK_URL"] = f"http://127.0.0.1:{dead_port}/hook"
    notify_env["NOTIFY_EMAIL_TO"] = ""
    from webapp import create_app

    app = create_app({"TESTING": True})
    with app.app_context():
        db.create_all()
    client = token_client(app, "admin", "admin")
    processes.worker()
    # The scheduler puts each retry back on the queue when its interval is over.
    processes.scheduler()

    run = launch(client, "fail.yml")
    ended = wait_status(client, run["id"], "failed")

    rows = wait_for(
        lambda: [d for d in deliveries(client) if d["status"] == "failed"],
        60,
        message="the delivery to be marked failed",
    )
    assert len(rows) == 1
    assert rows[0]["attempts"] == 3
    assert "Connection refused" in rows[0]["error"] or "URLError" in rows[0]["error"]
    after = client.get(f"/api/deployments/{run['id']}").get_json()
    assert after["status"] == "failed"
    assert after["reason"] == ended["reason"]
    assert after["finished_at"] == ended["finished_at"]
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_routes_file_per_playbook_slack(
    shepherd_env, receiver, monkeypatch, tmp_path, redis_client
):
    routes = tmp_path / "routes.yml"
    routes.write_text(
        f"- playbooks: [fail.yml]\n"
        f"  events: [run_failed]\n"
        f"  webhook: {receiver.url}/slack\n"
        f"  format: slack\n"
        f"- playbooks: [other.yml]\n"
        f"  webhook: {receiver.url}/other\n"
    )
    monkeypatch.setenv("NOTIFY_ROUTES", str(routes))
    from webapp import create_app

    app = create_app({"TESTING": True})
    with app.app_context():
        db.create_all()
        matched = make_run(playbook="fail.yml")
        unmatched = make_run(playbook="ping.yml")

        assert state.finish(matched, "failed", "boom", decided_by="worker")
        assert state.finish(unmatched, "failed", "boom", decided_by="worker")

        rows = db.session.scalars(select(NotificationDelivery)).all()
        assert len(rows) == 1
        assert rows[0].destination == f"{receiver.url}/slack"
        assert set(rows[0].payload) == {"text"}
        assert notify.deliver_notification(rows[0].id) == "sent"
        db.session.remove()
        db.engine.dispose()
    assert receiver.bodies[0]["path"] == "/slack"
    assert receiver.bodies[0]["body"]["text"].startswith(f"Shepherd: run {matched}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{a: 1}", "must contain a YAML list"),
        ("- [unclosed", "cannot be read"),
        ("- webhook: http://127.0.0.1:1/\n  events: [nope]", "unknown events"),
        ("- playbooks: [x.yml]", "neither a webhook nor an email"),
        ("- webhook: http://127.0.0.1:1/\n  format: xml", "use json or slack"),
    ],
)
def test_routes_file_invalid(tmp_path, text, message):
    path = tmp_path / "routes.yml"
    path.write_text(text)
    config = {
        "NOTIFY_WEBHOOK_URL": "",
        "NOTIFY_EMAIL_TO": [],
        "NOTIFY_ROUTES": str(path),
    }

    with pytest.raises(notify.NotifyError, match=message):
        notify.load_routes(config)


def test_each_ending_notifies_once(notify_env, app, redis_client):
    with app.app_context():
        run_id = make_run()

        first = state.finish(run_id, "abandoned", "gone", decided_by="sweep")
        second = state.finish(run_id, "failed", "late", decided_by="worker")
        third = state.finish(run_id, "abandoned", "again", decided_by="operator")

        rows = db.session.scalars(select(NotificationDelivery)).all()
    assert (first, second, third) == (True, False, False)
    assert sorted(r.channel for r in rows) == ["email", "webhook"]
    assert {r.event for r in rows} == {"run_abandoned"}
    assert redis_client.llen("rq:queue:shepherd-notify") == 2


def test_canceled_run_notifies_nothing(notify_env, app, redis_client):
    with app.app_context():
        run_id = make_run()

        assert state.finish(run_id, "canceled", "by ops", decided_by="operator")

        assert db.session.scalars(select(NotificationDelivery)).all() == []


def test_failure_threshold_alerts_once(notify_env, monkeypatch, redis_client):
    monkeypatch.setenv("FAILURE_ALERT_THRESHOLD", "2")
    monkeypatch.setenv("NOTIFY_EMAIL_TO", "")
    from webapp import create_app

    app = create_app({"TESTING": True})
    with app.app_context():
        db.create_all()
        for _ in range(4):
            state.finish(make_run(), "timeout", "too slow", decided_by="worker")

        events = [
            r.event for r in db.session.scalars(select(NotificationDelivery)).all()
        ]
        db.session.remove()
        db.engine.dispose()
    assert events.count("run_timeout") == 4
    assert events.count("failure_threshold") == 1


def test_stuck_run_notified_once(notify_env, app, redis_client):
    with app.app_context():
        stuck = make_run(started_at=utcnow() - timedelta(hours=3))
        make_run(started_at=utcnow())

        first = notify.notify_stuck_runs(app.config)
        second = notify.notify_stuck_runs(app.config)

        rows = db.session.scalars(select(NotificationDelivery)).all()
    assert first == 2
    assert second == 0
    assert {r.event for r in rows} == {"run_stuck"}
    assert {r.deployment_id for r in rows} == {stuck}


def test_notification_error_never_blocks_finish(notify_env, app, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "unix:///nonexistent/redis.sock")
    app.config["REDIS_URL"] = "unix:///nonexistent/redis.sock"
    app.extensions.pop("redis", None)
    with app.app_context():
        run_id = make_run()

        assert state.finish(run_id, "failed", "boom", decided_by="worker")

        assert db.session.get(Deployment, run_id).status == "failed"
        rows = db.session.scalars(select(NotificationDelivery)).all()
    assert {r.status for r in rows} == {"failed"}
    assert all("nonexistent" in r.error for r in rows)


def test_notifications_page_lists_deliveries(notify_env, app, client, redis_client):
    with app.app_context():
        run_id = make_run()
        state.finish(run_id, "failed", "boom <b>", decided_by="worker")
        row = db.session.scalars(select(NotificationDelivery)).first()
        row.status = "failed"
        row.error = "URLError: <refused>"
        db.session.commit()

    response = client.get("/notifications")

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "run_failed" in page
    assert f"/runs/{run_id}" in page
    assert "URLError: &lt;refused&gt;" in page
    assert "ops@example.org" in page
