"""Host leases with real workers and scheduler: waiting, holders, release on any end."""

import os
import signal
from datetime import timedelta
from pathlib import Path

from conftest import (
    get_run,
    launch,
    wait_for,
    wait_output,
    wait_status,
    write_inventory,
)

from jobs import leases
from jobs.sweep import LAST_SWEEP_KEY
from webapp.extensions import db
from webapp.models import Deployment, HostLease, RunStatus, utcnow

# Short sweep timings for the processes of a test, in seconds.
FAST = {"HEARTBEAT_INTERVAL": "1", "HEARTBEAT_GRACE": "3", "SWEEP_INTERVAL": "1"}


def lease_hosts(client):
    return {
        lease["host"]: lease["run_id"]
        for lease in client.get("/api/targets").get_json()["leases"]
    }


def queue_reason(client, run_id):
    return get_run(client, run_id)["queue_reason"]


def test_second_run_waits_for_holder(client, processes):
    # The sweep's lost-job rule looks at the waiting run every second.
    processes.scheduler(env={"SWEEP_INTERVAL": "1", "REQUEUE_AFTER": "1"})
    processes.worker()
    processes.worker()
    first = launch(client, "sleep.yml", "localhost", extra_vars={"seconds": 8})
    wait_status(client, first["id"], "running")

    second = launch(client, "ping.yml", "localhost")

    # The worker that took the job puts it back to wait, with the reason.
    wait_output(client, second["id"], f"held by run {first['id']}")
    reason = queue_reason(client, second["id"])
    assert reason["code"] == "host_leased"
    assert reason["message"].startswith("waiting for localhost, held by run")
    assert f"run {first['id']} (launched by " in reason["message"]
    assert reason["holders"][0]["run_id"] == first["id"]
    assert get_run(client, second["id"])["status"] == "queued"
    assert lease_hosts(client) == {"localhost": first["id"]}

    listed = {
        row["id"]: row
        for row in client.get("/api/deployments").get_json()["deployments"]
    }
    assert listed[second["id"]]["queue_reason"]["code"] == "host_leased"
    assert listed[first["id"]]["queue_reason"] is None
    history_page = client.get("/runs").get_data(as_text=True)
    assert f"held by run {first['id']}" in history_page
    run_page = client.get(f"/runs/{second['id']}").get_data(as_text=True)
    assert f"held by run {first['id']}" in run_page
    targets_page = client.get("/targets").get_data(as_text=True)
    assert f"run {first['id']}</a>" in targets_page

    done_first = wait_status(client, first["id"], {"successful", "failed"}, 60)
    done_second = wait_status(client, second["id"], {"successful", "failed"}, 60)
    assert done_first["status"] == "successful"
    assert done_second["status"] == "successful"
    assert done_second["started_at"] >= done_first["finished_at"]
    assert done_second["attempt"] == 1
    output = client.get(f"/api/deployments/{second['id']}/output").get_data(
        as_text=True
    )
    assert "lost from Redis" not in output
    assert lease_hosts(client) == {}


def test_playbook_without_leases_runs_beside(app, client, processes):
    report = Path(app.config["PLAYBOOK_DIR"]) / "report.yml"
    report.write_text(
        "# description: A read-only report\n# leases: none\n"
        + Path(app.config["PLAYBOOK_DIR"], "ping.yml").read_text()
    )
    processes.scheduler()
    processes.worker()
    processes.worker()
    holder = launch(client, "sleep.yml", "localhost", extra_vars={"seconds": 30})
    wait_status(client, holder["id"], "running")

    reader = launch(client, "report.yml", "localhost")
    done = wait_status(client, reader["id"], {"successful", "failed"}, 60)

    assert done["status"] == "successful"
    assert get_run(client, holder["id"])["status"] == "running"
    assert lease_hosts(client) == {"localhost": holder["id"]}
    client.post(f"/api/deployments/{holder['id']}/cancel")
    wait_status(client, holder["id"], "canceled")
    assert lease_hosts(client) == {}


def test_group_run_waits_for_any_member(client, processes, shepherd_env):
    local = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "group": "fleet",
    }
    write_inventory(
        shepherd_env["INVENTORY"],
        extra_hosts={"alpha": dict(local), "beta": dict(local)},
    )
    processes.scheduler()
    processes.worker()
    processes.worker()
    first = launch(client, "sleep.yml", "beta", extra_vars={"seconds": 6})
    wait_status(client, first["id"], "running")

    group = launch(client, "ping.yml", "fleet")
    wait_output(client, group["id"], f"waiting for beta, held by run {first['id']}")

    # All or none: the free member was not taken while the run waits.
    assert lease_hosts(client) == {"beta": first["id"]}
    done = wait_status(client, group["id"], {"successful", "failed"}, 60)
    assert done["status"] == "successful"
    assert set(done["stats"]) == {"alpha", "beta"}


def test_killed_run_releases_leases_by_sweep(client, processes):
    processes.scheduler(env=FAST)
    doomed = processes.worker(env=FAST)
    first = launch(client, "sleep.yml", "localhost", extra_vars={"seconds": 120})
    wait_status(client, first["id"], "running")
    horse = wait_for(doomed.horse_pid, 10, message="the work horse")
    processes.worker(env=FAST)
    second = launch(client, "ping.yml", "localhost")
    wait_output(client, second["id"], f"held by run {first['id']}")

    # Worker first, so no parent is left to notice its horse die.
    os.kill(doomed.pid, signal.SIGKILL)
    os.kill(horse, signal.SIGKILL)

    ended = wait_status(client, first["id"], "abandoned", 60)
    assert ended["verdict"]["decided_by"] == "sweep"
    done = wait_status(client, second["id"], {"successful", "failed"}, 60)
    assert done["status"] == "successful"
    assert lease_hosts(client) == {}


def add_run(status, **fields):
    run = Deployment(
        playbook="ping.yml",
        target="localhost",
        extra_vars={},
        timeout=60,
        status=status,
        **fields,
    )
    db.session.add(run)
    db.session.commit()
    return run


def test_acquire_takes_all_or_none(app):
    with app.app_context():
        holder = add_run(RunStatus.RUNNING.value)
        waiter = add_run(RunStatus.QUEUED.value)
        assert leases.acquire(holder.id, 1, ["alpha"]) is None  # not queued

        db.session.add(HostLease(host="alpha", deployment_id=holder.id))
        db.session.commit()
        blocking = leases.acquire(waiter.id, 1, ["alpha", "beta"])

        assert [entry["host"] for entry in blocking] == ["alpha"]
        assert blocking[0]["run_id"] == holder.id
        assert db.session.get(HostLease, "beta") is None

        holder.status = RunStatus.FAILED.value
        db.session.commit()
        assert leases.acquire(waiter.id, 1, ["alpha", "beta"]) == []
        owners = {lease.host: lease.deployment_id for lease in HostLease.query.all()}
        assert owners == {"alpha": waiter.id, "beta": waiter.id}


def test_finish_releases_leases(app):
    from jobs import state

    with app.app_context():
        run = add_run(RunStatus.QUEUED.value)
        assert leases.acquire(run.id, 1, ["alpha"]) == []

        assert state.finish(run.id, RunStatus.CANCELED, "test", decided_by="operator")

        assert HostLease.query.count() == 0


def test_sweep_rule_releases_stale_leases(app):
    with app.app_context():
        ended = add_run(RunStatus.ABANDONED.value)
        stale_queued = add_run(RunStatus.QUEUED.value)
        fresh_queued = add_run(RunStatus.QUEUED.value)
        running = add_run(RunStatus.RUNNING.value)
        long_ago = utcnow() - timedelta(minutes=5)
        db.session.add_all(
            [
                HostLease(host="a", deployment_id=ended.id),
                HostLease(
                    host="b", deployment_id=stale_queued.id, acquired_at=long_ago
                ),
                HostLease(host="c", deployment_id=fresh_queued.id),
                HostLease(host="d", deployment_id=running.id, acquired_at=long_ago),
            ]
        )
        db.session.commit()

        released = leases.release_stale(grace=15)

        assert released == 2
        assert sorted(lease.host for lease in HostLease.query.all()) == ["c", "d"]


def test_leases_survive_redis_restart(client, processes, redis_server):
    fast = {"SWEEP_INTERVAL": "1", "REQUEUE_AFTER": "1"}
    processes.scheduler(env=fast)
    processes.worker(env=fast)
    processes.worker(env=fast)
    first = launch(client, "sleep.yml", "localhost", extra_vars={"seconds": 20})
    wait_status(client, first["id"], "running")
    second = launch(client, "ping.yml", "localhost")
    wait_output(client, second["id"], f"held by run {first['id']}")

    redis_server.restart()

    assert lease_hosts(client) == {"localhost": first["id"]}
    # The sweep enqueues the lost job again, and the new try waits too.
    requeued = wait_for(
        lambda: (run := get_run(client, second["id"]))["attempt"] == 2 and run,
        60,
        message="the lost job to be enqueued again",
    )
    assert requeued["status"] == "queued"
    assert get_run(client, first["id"])["status"] == "running"
    done_first = wait_status(client, first["id"], {"successful", "failed"}, 60)
    done_second = wait_status(client, second["id"], {"successful", "failed"}, 60)
    assert done_second["status"] == "successful"
    assert done_second["started_at"] >= done_first["finished_at"]


def test_scheduler_outlives_redis_outage(app, processes, redis_server, redis_client):
    scheduler = processes.scheduler(env={"SWEEP_INTERVAL": "1"})

    redis_server.restart(down_for=3)
    redis_client.delete(LAST_SWEEP_KEY)

    wait_for(
        lambda: redis_client.get(LAST_SWEEP_KEY) is not None,
        30,
        message="a sweep after Redis came back",
    )
    assert scheduler.alive()
