"""Partial re-runs and forced endings, on several inventory aliases of localhost."""

import pytest
from conftest import (
    get_run,
    launch,
    run_processes,
    wait_for,
    wait_output,
    wait_status,
    write_inventory,
)

FAST = {"HEARTBEAT_INTERVAL": "1", "HEARTBEAT_GRACE": "5", "SWEEP_INTERVAL": "1"}


@pytest.fixture
def fleet(shepherd_env):
    """Four local aliases in group fleet; beta and delta fail in flaky.yml."""
    hosts = {}
    for name in ("alpha", "beta", "gamma", "delta"):
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "group": "fleet",
            "must_fail": name in ("beta", "delta"),
        }
    write_inventory(shepherd_env["INVENTORY"], extra_hosts=hosts)
    return sorted(hosts)


def relaunch(client, run_id, hosts):
    return client.post(f"/api/deployments/{run_id}/relaunch", json={"hosts": hosts})


def test_rerun_failed_limits_to_those_hosts(client, processes, fleet):
    processes.worker()
    first = launch(client, "flaky.yml", "fleet")
    done = wait_status(client, first["id"], {"successful", "failed"})
    assert done["status"] == "failed"
    assert set(done["stats"]) == set(fleet)
    assert done["host_results"] == {
        "alpha": "ok",
        "beta": "failed",
        "gamma": "ok",
        "delta": "failed",
    }

    response = relaunch(client, first["id"], "failed")

    assert response.status_code == 201, response.get_json()
    again = response.get_json()
    assert again["limit_hosts"] == ["beta", "delta"]
    assert again["target"] == "fleet"
    assert again["relaunch_of"] == first["id"]
    rerun = wait_status(client, again["id"], {"successful", "failed"})
    assert set(rerun["stats"]) == {"beta", "delta"}
    assert "alpha" not in client.get(f"/api/deployments/{again['id']}/output").get_data(
        as_text=True
    )
    page = client.get(f"/runs/{again['id']}").get_data(as_text=True)
    assert "limited to beta, delta" in page


def test_rerun_all_keeps_every_host(client, fleet):
    first = launch(client, "ping.yml", "fleet")

    again = relaunch(client, first["id"], "all").get_json()

    assert again["limit_hosts"] is None
    assert again["target"] == "fleet"


@pytest.mark.parametrize(
    ("hosts", "status", "fragment"),
    [
        ("bogus", 400, "'bogus'"),
        ("failed", 409, "still queued"),
        ("unfinished", 409, "still queued"),
    ],
)
def test_rerun_rejects_bad_choice(client, fleet, hosts, status, fragment):
    first = launch(client, "ping.yml", "fleet")

    response = relaunch(client, first["id"], hosts)

    assert response.status_code == status
    assert response.get_json()["field"] == "hosts"
    assert fragment in response.get_json()["error"]


def test_rerun_unfinished_only_after_interruption(client, processes, fleet):
    processes.worker()
    first = launch(client, "flaky.yml", "fleet")
    wait_status(client, first["id"], {"successful", "failed"})

    response = relaunch(client, first["id"], "unfinished")

    assert response.status_code == 409
    assert "abandoned or timed-out" in response.get_json()["error"]


def test_force_end_kills_and_reruns_unfinished(client, processes, fleet):
    processes.worker(env=FAST)
    run = launch(client, "flaky.yml", "fleet", extra_vars={"seconds": 120})
    wait_for(
        lambda: (p := get_run(client, run["id"])["progress"])
        and p["hosts"].get("beta", {}).get("failed")
        and p["hosts"].get("delta", {}).get("failed"),
        60,
        message="beta and delta to fail",
    )
    wait_output(client, run["id"], "Sleep")

    response = client.post(
        f"/api/deployments/{run['id']}/force-end",
        json={"reason": "hosts are being rebooted"},
    )

    assert response.status_code == 200, response.get_json()
    ended = response.get_json()
    assert ended["status"] == "abandoned"
    assert ended["reason_code"] == "forced"
    assert ended["reason"] == "force-ended by admin: hosts are being rebooted"
    assert ended["verdict"]["decided_by"] == "admin"
    assert ended["verdict"]["evidence"]["reason"] == "hosts are being rebooted"
    hostname = ended["hostname"]
    assert run_processes(hostname, run["id"]) == []
    wait_output(client, run["id"], "force-ended by admin")
    again = relaunch(client, run["id"], "unfinished").get_json()
    assert again["limit_hosts"] == ["alpha", "gamma"]
    failed = relaunch(client, run["id"], "failed").get_json()
    assert failed["limit_hosts"] == ["beta", "delta"]


def test_force_end_elsewhere_left_to_worker_host(app, client, processes):
    processes.worker(env=FAST)
    run = launch(client, "sleep.yml", "localhost", extra_vars={"seconds": 120})
    wait_output(client, run["id"], "before the sleep")
    running = get_run(client, run["id"])
    wait_for(lambda: run_processes(running["hostname"], run["id"]), 10, message="sleep")
    # This web process stands for another machine than the worker's.
    app.config["HOSTNAME"] = "another-host"

    response = client.post(
        f"/api/deployments/{run['id']}/force-end", json={"reason": "stuck"}
    )

    assert response.status_code == 200
    assert response.get_json()["status"] == "abandoned"
    # The worker's host kills them: on the stop-job command or at its sweep.
    wait_for(
        lambda: not run_processes(running["hostname"], run["id"]),
        30,
        message="the worker's host to kill the run's processes",
    )


def test_force_end_form_needs_reason(client):
    run = launch(client)
    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert 'id="force-end-form"' in page

    rejected = client.post(f"/runs/{run['id']}/force-end", data={"reason": ""})
    assert rejected.status_code == 302
    assert get_run(client, run["id"])["status"] == "queued"
    client.post(f"/runs/{run['id']}/force-end", data={"reason": "stale"})

    ended = get_run(client, run["id"])
    assert ended["status"] == "abandoned"
    assert ended["reason"].endswith(": stale")
    assert 'id="force-end-form"' not in client.get(f"/runs/{run['id']}").get_data(
        as_text=True
    )


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "   "}, None])
def test_force_end_requires_reason(client, body):
    run = launch(client)

    response = client.post(f"/api/deployments/{run['id']}/force-end", json=body)

    assert response.status_code == 400
    assert response.get_json()["field"] == "reason"
    assert get_run(client, run["id"])["status"] == "queued"


def test_force_end_of_ended_run_conflicts(client):
    run = launch(client)
    client.post(f"/api/deployments/{run['id']}/cancel")

    response = client.post(
        f"/api/deployments/{run['id']}/force-end", json={"reason": "why not"}
    )

    assert response.status_code == 409
    assert client.post("/api/deployments/999/force-end", json={}).status_code == 404


def test_relaunch_form_passes_host_choice(client, fleet):
    run = launch(client, "ping.yml", "fleet")
    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert 'name="hosts"' in page

    response = client.post(
        f"/runs/{run['id']}/relaunch", data={"hosts": "failed"}, follow_redirects=True
    )

    assert "needs a run that has ended" in response.get_data(as_text=True)
    listed = client.get("/api/deployments").get_json()["deployments"]
    assert [row["id"] for row in listed] == [run["id"]]
