"""Fault injection: every run ends in a terminal state soon, with a reason, and leaves nothing.

Real Redis, real worker and scheduler processes, real ansible-playbook and
real signals. Each case checks the final status, the reason, a time bound
with a margin, that no process of the run survives and that output printed
before the fault is kept.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest
from conftest import (
    ROOT,
    free_port,
    get_run,
    launch,
    run_processes,
    wait_for,
    wait_output,
    wait_status,
)

TERMINAL = {"successful", "failed", "timeout", "canceled", "abandoned"}


def start_sleep_run(client, seconds=120, **fields):
    """Launch sleep.yml and wait until its silent task runs."""
    run = launch(
        client, "sleep.yml", "localhost", extra_vars={"seconds": seconds}, **fields
    )
    wait_output(client, run["id"], "before the sleep", timeout=60)
    wait_for(lambda: get_run(client, run["id"])["pid"], 10, message="the playbook PID")
    return run


def sleep_task_pids(hostname, run_id):
    """Return the PIDs of the run's `sleep` task processes (in Ansible's own session)."""
    return wait_for(
        lambda: [p.pid for p in run_processes(hostname, run_id) if _name(p) == "sleep"],
        30,
        message="the sleep task to start",
    )


def _name(process):
    # A process listed a moment ago may have exited since.
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return None


def assert_gone(hostname, run_id, pids=(), within=5.0):
    wait_for(
        lambda: not run_processes(hostname, run_id)
        and not any(_alive(p) for p in pids),
        within,
        message=f"every process of run {run_id} to exit",
    )


def test_horse_killed_ends_abandoned_at_once(client, processes, shepherd_env):
    hostname = shepherd_env["SHEPHERD_HOSTNAME"]
    worker = processes.worker()
    run = start_sleep_run(client)
    task_pids = sleep_task_pids(hostname, run["id"])

    horse = worker.horse_pid()
    started = time.monotonic()
    psutil.Process(horse).kill()
    done = wait_status(client, run["id"], TERMINAL, timeout=15)
    elapsed = time.monotonic() - started

    assert done["status"] == "abandoned"
    assert "SIGKILL" in done["reason"]
    assert worker.name in done["reason"]
    assert hostname in done["reason"]
    assert done["verdict"]["decided_by"] == "worker"
    assert done["verdict"]["code"] == "horse_killed"
    assert done["verdict"]["last_tasks"]["localhost"] == "Sleep silently"
    assert elapsed < 5
    assert_gone(hostname, run["id"], task_pids)
    output = client.get(f"/api/deployments/{run['id']}/output").get_data(as_text=True)
    assert "before the sleep" in output
    assert "[shepherd] abandoned" in output
    assert worker.alive()


def test_worker_and_horse_killed_ended_by_heartbeat_sweep(
    client, processes, shepherd_env
):
    """The scheduler runs as another host, so only the stale heartbeat can tell."""
    hostname = shepherd_env["SHEPHERD_HOSTNAME"]
    worker = processes.worker()
    processes.scheduler(env={"SHEPHERD_HOSTNAME": "sweeper-elsewhere"})
    run = start_sleep_run(client)
    task_pids = sleep_task_pids(hostname, run["id"])

    horse = worker.horse_pid()
    started = time.monotonic()
    worker.send(signal.SIGKILL)
    psutil.Process(horse).kill()

    # The parent-death signal takes the whole Ansible tree down with the horse.
    assert_gone(hostname, run["id"], task_pids, within=5)
    done = wait_status(client, run["id"], TERMINAL, timeout=40)
    elapsed = time.monotonic() - started

    assert done["status"] == "abandoned"
    assert "no heartbeat" in done["reason"]
    assert done["verdict"]["decided_by"] == "sweep"
    assert done["verdict"]["code"] == "stale_heartbeat"
    evidence = done["verdict"]["evidence"]
    assert evidence["grace"] == 15
    assert evidence["clock"] == "database"
    assert evidence["heartbeat_age"] > 15
    assert elapsed < 25
    assert "before the sleep" in client.get(
        f"/api/deployments/{run['id']}/output"
    ).get_data(as_text=True)


def test_worker_and_horse_killed_same_host_sweep_is_fast(
    client, processes, shepherd_env
):
    worker = processes.worker()
    processes.scheduler()
    run = start_sleep_run(client)

    horse = worker.horse_pid()
    started = time.monotonic()
    worker.send(signal.SIGKILL)
    psutil.Process(horse).kill()
    done = wait_status(client, run["id"], TERMINAL, timeout=20)

    assert done["status"] == "abandoned"
    assert done["verdict"]["code"] == "horse_gone"
    assert time.monotonic() - started < 10


def test_new_worker_ends_dead_run_and_kills_orphans_at_start(
    client, processes, shepherd_env
):
    hostname = shepherd_env["SHEPHERD_HOSTNAME"]
    worker = processes.worker()
    run = start_sleep_run(client)
    horse = worker.horse_pid()
    # An orphan that escaped the parent-death signal: a process carrying the
    # run's marker in its own session, as Ansible's workers do.
    orphan = psutil.Popen(
        ["sleep", "300"],
        env={"SHEPHERD_RUN": f"{hostname}/{run['id']}/1", "PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )

    worker.send(signal.SIGKILL)
    psutil.Process(horse).kill()
    time.sleep(1)
    assert get_run(client, run["id"])["status"] == "running"
    assert orphan.is_running()

    started = time.monotonic()
    processes.worker()
    done = wait_status(client, run["id"], TERMINAL, timeout=20)

    assert done["status"] == "abandoned"
    assert done["verdict"]["code"] == "horse_gone"
    assert time.monotonic() - started < 15
    orphan.wait(10)
    assert_gone(hostname, run["id"])


def test_timeout_kills_tree_and_ends_timeout(client, processes, shepherd_env):
    hostname = shepherd_env["SHEPHERD_HOSTNAME"]
    processes.worker()
    run = launch(
        client, "sleep.yml", "localhost", extra_vars={"seconds": 120}, timeout=12
    )
    task_pids = sleep_task_pids(hostname, run["id"])

    done = wait_status(client, run["id"], TERMINAL, timeout=60)

    assert done["status"] == "timeout"
    assert "12 s" in done["reason"]
    assert done["verdict"]["decided_by"] == "timeout"
    started = get_run(client, run["id"])
    from datetime import datetime

    ran_for = (
        datetime.fromisoformat(started["finished_at"])
        - datetime.fromisoformat(started["started_at"])
    ).total_seconds()
    assert 12 <= ran_for < 12 + 5
    assert_gone(hostname, run["id"], task_pids)
    assert "before the sleep" in client.get(
        f"/api/deployments/{run['id']}/output"
    ).get_data(as_text=True)


def test_warm_shutdown_lets_run_finish(client, processes):
    worker = processes.worker()
    run = start_sleep_run(client, seconds=4)

    worker.send(signal.SIGTERM)
    done = wait_status(client, run["id"], TERMINAL, timeout=60)

    assert done["status"] == "successful"
    try:
        wait_for(
            lambda: not worker.alive(), 40, message="the worker to exit after its run"
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; worker output:\n{worker.output()[-3000:]}"
        ) from None


def test_cold_shutdown_ends_abandoned(client, processes, shepherd_env):
    hostname = shepherd_env["SHEPHERD_HOSTNAME"]
    worker = processes.worker()
    run = start_sleep_run(client)
    task_pids = sleep_task_pids(hostname, run["id"])

    worker.send(signal.SIGTERM)
    time.sleep(1.5)  # RQ ignores a second signal within one second
    started = time.monotonic()
    worker.send(signal.SIGTERM)
    done = wait_status(client, run["id"], TERMINAL, timeout=20)

    assert done["status"] == "abandoned"
    # The cold-shutdown handler and the worker's own host sweep (which finds
    # the killed horse gone) race to end the run; either verdict is right.
    assert "cold" in done["reason"] or "is gone" in done["reason"]
    assert time.monotonic() - started < 5
    assert_gone(hostname, run["id"], task_pids)


def test_cancel_running_run(client, processes, shepherd_env):
    hostname = shepherd_env["SHEPHERD_HOSTNAME"]
    worker = processes.worker()
    run = start_sleep_run(client)
    task_pids = sleep_task_pids(hostname, run["id"])

    started = time.monotonic()
    response = client.post(f"/api/deployments/{run['id']}/cancel")

    assert response.status_code == 200
    done = get_run(client, run["id"])
    assert done["status"] == "canceled"
    assert done["reason"] == "canceled by admin"
    assert_gone(hostname, run["id"], task_pids, within=5)
    assert time.monotonic() - started < 5
    assert worker.alive()
    again = client.post(f"/api/deployments/{run['id']}/cancel")
    assert again.status_code == 409


def test_cancel_queued_run(client, app):
    run = launch(client)

    response = client.post(f"/api/deployments/{run['id']}/cancel")

    assert response.status_code == 200
    assert get_run(client, run["id"])["status"] == "canceled"


def test_prompts_fail_with_the_prompt_in_reason(client, processes):
    processes.worker()

    pause = launch(client, "prompt_pause.yml", "localhost", timeout=60)
    ask = launch(client, "prompt_vars.yml", "localhost", timeout=60)
    pause_done = wait_status(client, pause["id"], TERMINAL, timeout=40)
    ask_done = wait_status(client, ask["id"], TERMINAL, timeout=40)

    assert pause_done["status"] == "failed"
    assert "Type yes to reboot" in pause_done["reason"]
    assert pause_done["reason_code"] == "waits_for_input"
    assert "must never run" not in client.get(
        f"/api/deployments/{pause['id']}/output"
    ).get_data(as_text=True)
    assert ask_done["status"] == "failed"
    assert "Which release" in ask_done["reason"]


def test_answered_vars_prompt_runs(client, processes):
    processes.worker()

    run = launch(client, "prompt_vars.yml", "localhost", extra_vars={"release": "7"})
    done = wait_status(client, run["id"], TERMINAL, timeout=40)

    assert done["status"] == "successful"


def test_redis_down_at_launch_is_503_without_row(app, client, monkeypatch, tmp_path):
    from webapp.extensions import db
    from webapp.models import Deployment

    app.config["REDIS_URL"] = f"unix://{tmp_path}/nothing-here.sock"
    app.extensions.pop("redis", None)

    response = client.post(
        "/api/deployments", json={"playbook": "ping.yml", "target": "localhost"}
    )

    assert response.status_code == 503
    assert "unreachable" in response.get_json()["error"]
    assert "nothing-here.sock" in response.get_json()["error"]
    with app.app_context():
        assert db.session.query(Deployment).count() == 0


def test_two_schedulers_finalize_once(client, processes, shepherd_env):
    worker = processes.worker()
    for name in ("sweeper-a", "sweeper-b"):
        processes.scheduler(env={"SHEPHERD_HOSTNAME": name, "SWEEP_INTERVAL": "1"})
    runs = [start_sleep_run(client)]

    horse = worker.horse_pid()
    worker.send(signal.SIGKILL)
    psutil.Process(horse).kill()
    done = wait_status(client, runs[0]["id"], TERMINAL, timeout=40)
    time.sleep(3)  # let both schedulers sweep again

    assert done["status"] == "abandoned"
    output = client.get(f"/api/deployments/{runs[0]['id']}/output").get_data(
        as_text=True
    )
    assert output.count("[shepherd] abandoned") == 1
    assert get_run(client, runs[0]["id"])["verdict"] == done["verdict"]


@pytest.mark.slow
def test_redis_restart_loses_nothing(client, processes, redis_server, app):
    processes.worker(env={"HEARTBEAT_GRACE": "30"})
    processes.scheduler(env={"REQUEUE_AFTER": "1"})
    running = start_sleep_run(client, seconds=6)
    app.config["QUEUE_NAME"]  # the queued runs wait behind the running one
    queued = [launch(client, "ping.yml", "localhost") for _ in range(2)]

    redis_server.restart()
    app.extensions.pop("redis", None)

    done = wait_status(client, running["id"], TERMINAL, timeout=60)
    assert done["status"] == "successful"
    for run in queued:
        finished = wait_status(client, run["id"], TERMINAL, timeout=90)
        assert finished["status"] == "successful"
        assert finished["attempt"] == 2
        output = client.get(f"/api/deployments/{run['id']}/output").get_data(
            as_text=True
        )
        assert "enqueued it again" in output


def test_big_output_stored_with_bounded_worker_memory(client, processes):
    worker = processes.worker()
    run = launch(client, "big_output.yml", "localhost", timeout=300)

    # The horse's RSS right after the fork includes the pages it shares with
    # the worker, so growth from the first sample is what the run added.
    first_rss = None
    peak = 0
    deadline = time.monotonic() + 280
    while time.monotonic() < deadline:
        horse = worker.horse_pid()
        if horse:
            try:
                rss = psutil.Process(horse).memory_info().rss
            except psutil.NoSuchProcess:
                rss = None
            if rss is not None:
                first_rss = rss if first_rss is None else first_rss
                peak = max(peak, rss)
        if get_run(client, run["id"])["status"] in TERMINAL:
            break
        time.sleep(0.2)

    done = get_run(client, run["id"])
    assert done["status"] == "successful"
    output = client.get(f"/api/deployments/{run['id']}/output").get_data(as_text=True)
    assert len(output) > 50_000_000
    assert "block 511" in output
    assert first_rss is not None, "the work horse was never seen"
    assert peak < 250 * 1024 * 1024
    # pexpect keeping all text since its last pattern match made the horse
    # grow by more than the 50 MB output here.
    growth_mb = (peak - first_rss) / 2**20
    assert growth_mb < 25, f"the work horse grew by {growth_mb:.0f} MB"


def test_invalid_utf8_stored_with_replacement_characters(app, client, tmp_path):
    """ansible-core 2.19 replaces invalid bytes itself, so feed them to the reader directly."""
    from jobs import output
    from webapp.extensions import db
    from webapp.models import Deployment

    (tmp_path / "stdout").write_bytes(b"before \xff\xfe after \xc3\x28 end\n")
    with app.app_context():
        run = Deployment(
            playbook="ping.yml",
            target="localhost",
            timeout=60,
            status="failed",
            reason="test",
        )
        db.session.add(run)
        db.session.commit()
        run_id = run.id
        offset = output.copy_new_output(run_id, str(tmp_path), 0)

    assert offset == len(b"before \xff\xfe after \xc3\x28 end\n")
    text = client.get(f"/api/deployments/{run_id}/output").get_data(as_text=True)
    assert text == "before \ufffd\ufffd after \ufffd( end\n"
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "before \ufffd\ufffd after" in page


def test_output_reader_keeps_characters_split_across_reads(
    app, client, tmp_path, monkeypatch
):
    from jobs import output
    from webapp.extensions import db
    from webapp.models import Deployment

    monkeypatch.setattr(output, "CHUNK_BYTES", 8)
    (tmp_path / "stdout").write_bytes("abcdefg\u00e9\u20ac done".encode())
    with app.app_context():
        run = Deployment(playbook="ping.yml", target="localhost", timeout=60)
        db.session.add(run)
        db.session.commit()
        run_id = run.id
        output.copy_new_output(run_id, str(tmp_path), 0)

    text = client.get(f"/api/deployments/{run_id}/output").get_data(as_text=True)
    assert text == "abcdefg\u00e9\u20ac done"


def start_web(shepherd_env, port, tmp_path, name):
    env = {
        **os.environ,
        **shepherd_env,
        "SHEPHERD_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
    }
    log = open(tmp_path / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "gunicorn.conf.py",
            "webapp:create_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(
        lambda: _http_ok(f"http://127.0.0.1:{port}/login"),
        30,
        message="gunicorn to serve",
    )
    return proc


def _http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _http_json(url, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_web_restart_does_not_affect_run(client, processes, shepherd_env, tmp_path):
    """Runs never live in the web process: killing gunicorn mid-run changes nothing."""
    processes.worker()
    port = free_port()
    web = start_web(shepherd_env, port, tmp_path, "web-1")
    run = _http_json(
        f"http://127.0.0.1:{port}/api/deployments",
        client.token,
        {"playbook": "sleep.yml", "target": "localhost", "extra_vars": {"seconds": 4}},
    )
    wait_output(client, run["id"], "before the sleep", timeout=60)

    for child in psutil.Process(web.pid).children(recursive=True):
        child.kill()
    web.kill()
    web.wait(10)
    assert get_run(client, run["id"])["status"] == "running"
    web = start_web(shepherd_env, port, tmp_path, "web-2")

    try:
        done = wait_for(
            lambda: (
                r := _http_json(
                    f"http://127.0.0.1:{port}/api/deployments/{run['id']}", client.token
                )
            )["status"]
            in TERMINAL
            and r,
            60,
            message="the run to end",
        )
    finally:
        web.terminate()
        web.wait(10)
    assert done["status"] == "successful"


def test_worker_killed_alone_run_finishes_truly(client, processes, shepherd_env):
    """RQ marks the job failed when the worker dies, but the horse lives on."""
    worker = processes.worker()
    processes.scheduler(env={"SWEEP_INTERVAL": "1"})
    run = start_sleep_run(client, seconds=6)

    horse = worker.horse_pid()
    worker.send(signal.SIGKILL)
    done = wait_status(client, run["id"], TERMINAL, timeout=60)

    assert done["status"] == "successful"
    assert done["reason"] is None
    wait_for(lambda: not _alive(horse), 10, message="the orphaned horse to exit")


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_rq_registry_repaired_after_worker_death(
    client, processes, shepherd_env, redis_client, app
):
    from rq.registry import StartedJobRegistry

    from webapp.redis_conn import get_queue

    worker = processes.worker()
    processes.scheduler()
    run = start_sleep_run(client)
    horse = worker.horse_pid()
    worker.send(signal.SIGKILL)
    psutil.Process(horse).kill()
    wait_status(client, run["id"], TERMINAL, timeout=30)

    queue = get_queue(app.config, redis_client)
    wait_for(
        lambda: run["job_id"]
        not in StartedJobRegistry(queue=queue).get_job_ids(cleanup=False),
        15,
        message="the RQ job to leave the started registry",
    )
    assert run["job_id"] in queue.failed_job_registry.get_job_ids(cleanup=False)


def test_listener_stops_after_early_reply(redis_client):
    """The listener thread may read the UNSUBSCRIBE reply before its stop
    request. It must not then wait a minute for the next message."""
    from jobs.handlers import RunWorker

    worker = RunWorker(["shepherd"], connection=redis_client, name="listener-test")
    worker.subscribe()
    wait_for(lambda: worker.pubsub.subscribed, 10, message="the subscription")
    send_unsubscribe = worker.pubsub.unsubscribe

    def unsubscribe_then_stall(*args):
        send_unsubscribe(*args)
        time.sleep(1)  # the listener reads the reply and waits again

    worker.pubsub.unsubscribe = unsubscribe_then_stall
    stopper = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopper.start()
    stopper.join(15)

    assert not stopper.is_alive(), "the worker still waits for its listener"
    assert not worker.pubsub_thread.is_alive()
