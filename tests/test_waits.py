"""Why a queued run waits: no worker, busy workers with queue position, drain."""

from conftest import get_run, launch, wait_status, write_inventory

LOCAL = {
    "ansible_connection": "local",
    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
}


def reason(client, run_id):
    return get_run(client, run_id)["queue_reason"]


def test_reason_no_worker(client):
    run = launch(client)

    assert reason(client, run["id"])["code"] == "no_worker"
    assert "no worker is alive" in reason(client, run["id"])["message"]


def test_reason_busy_workers_with_position(client, processes, shepherd_env):
    write_inventory(
        shepherd_env["INVENTORY"],
        extra_hosts={name: dict(LOCAL) for name in ("alpha", "beta", "gamma")},
    )
    processes.worker()
    busy = launch(client, "sleep.yml", "alpha", extra_vars={"seconds": 60})
    wait_status(client, busy["id"], "running")

    second = launch(client, "ping.yml", "beta")
    third = launch(client, "ping.yml", "gamma")

    assert reason(client, second["id"]) == {
        "code": "workers_busy",
        "message": "all 1 worker(s) are busy; position 1 in the queue",
        "position": 1,
    }
    assert reason(client, third["id"])["position"] == 2
    assert reason(client, busy["id"]) is None
    client.post("/api/drain", json={"drain": "on"})
    assert reason(client, third["id"])["code"] == "draining"
    client.post(f"/api/deployments/{busy['id']}/cancel")
