"""Drain mode: new runs stay queued or are rejected, running runs finish."""

import pytest
from conftest import (
    get_run,
    launch,
    wait_for,
    wait_output,
    wait_status,
    write_inventory,
)

from webapp.extensions import db
from webapp.models import Deployment

LOCAL = {
    "ansible_connection": "local",
    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
}


def test_drain_holds_new_runs_until_off(client, runner, processes, shepherd_env):
    write_inventory(
        shepherd_env["INVENTORY"],
        extra_hosts={"alpha": dict(LOCAL), "beta": dict(LOCAL)},
    )
    processes.scheduler()
    processes.worker()
    processes.worker()
    running = launch(client, "slow.yml", "alpha", extra_vars={"steps": 6, "pause": 1})
    wait_status(client, running["id"], "running")

    response = client.post("/api/drain", json={"drain": "on"})
    assert response.status_code == 200
    assert response.get_json()["draining"] is True
    assert response.get_json()["by"] == "admin"
    assert response.get_json()["safe_to_restart"] is False
    held = launch(client, "ping.yml", "beta")

    wait_output(client, held["id"], "the service is draining")
    assert get_run(client, held["id"])["queue_reason"]["code"] == "draining"
    dashboard = client.get("/").get_data(as_text=True)
    assert '<span data-count="running">1</span> run(s) still running' in dashboard
    done = wait_status(client, running["id"], {"successful", "failed"}, 60)
    assert done["status"] == "successful"
    status = wait_for(
        lambda: (s := client.get("/api/drain").get_json())["safe_to_restart"] and s,
        10,
        message="a safe restart",
    )
    assert status["queued"] == 1
    assert get_run(client, held["id"])["status"] == "queued"
    assert "Safe to restart" in client.get("/").get_data(as_text=True)
    result = runner.invoke(args=["drain", "status"])
    assert "Safe to restart" in result.output

    result = runner.invoke(args=["drain", "off"])
    assert result.exit_code == 0, result.output
    assert "Not draining" in result.output
    started = wait_status(client, held["id"], {"successful", "failed"}, 60)
    assert started["status"] == "successful"


def test_drain_reject_answers_503(app, client):
    app.config["DRAIN_REJECT"] = True
    client.post("/api/drain", json={"drain": True})

    response = client.post(
        "/api/deployments", json={"playbook": "ping.yml", "target": "localhost"}
    )

    assert response.status_code == 503
    assert "draining" in response.get_json()["error"]
    with app.app_context():
        assert db.session.query(Deployment).count() == 0
    client.post("/api/drain", json={"drain": "off"})
    assert (
        client.post(
            "/api/deployments", json={"playbook": "ping.yml", "target": "localhost"}
        ).status_code
        == 201
    )


def test_drain_without_reject_queues(app, client):
    client.post("/api/drain", json={"drain": "on"})

    run = launch(client)

    assert run["status"] == "queued"


@pytest.mark.parametrize("body", [{}, {"drain": "maybe"}, {"drain": 1}, []])
def test_drain_rejects_bad_value(client, body):
    response = client.post("/api/drain", json=body)

    assert response.status_code == 400
    assert response.get_json()["field"] == "drain"


def test_drain_cli_on_and_status(runner):
    result = runner.invoke(args=["drain", "on", "--by", "ops"])

    assert result.exit_code == 0, result.output
    assert "Draining since" in result.output
    assert "(by ops)" in result.output
    assert "Safe to restart" in result.output
    assert runner.invoke(args=["drain", "sideways"]).exit_code != 0
