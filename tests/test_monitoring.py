"""Monitoring endpoints: /metrics in Prometheus text format and /healthz."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

from conftest import ROOT, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

from jobs.sweep import LAST_SWEEP_KEY
from webapp import create_app
from webapp.extensions import db
from webapp.models import Deployment, NotificationDelivery, utcnow


def add_run(status, playbook="ping.yml", duration=None, reason_code=None, **fields):
    started = utcnow() - timedelta(seconds=(duration or 0) + 60)
    run = Deployment(
        playbook=playbook,
        target="localhost",
        timeout=60,
        status=status,
        extra_vars={},
        started_at=started,
        finished_at=started + timedelta(seconds=duration) if duration else None,
        reason_code=reason_code,
        **fields,
    )
    db.session.add(run)
    db.session.commit()
    return run.id


def scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def test_metrics_runs_and_durations(app, client, redis_client):
    with app.app_context():
        add_run("successful", duration=3)
        add_run("successful", duration=100)
        add_run("failed", "fail.yml", duration=20)
        add_run("abandoned", duration=10, reason_code="stale_heartbeat")
        add_run("abandoned", duration=10, reason_code="horse_gone")
        add_run("running", heartbeat_at=utcnow())
        add_run("running", heartbeat_at=utcnow() - timedelta(minutes=5))
        db.session.add(
            NotificationDelivery(event="run_failed", channel="webhook", destination="x")
        )
        db.session.commit()

    samples = scrape(client)

    runs = (("playbook", "ping.yml"), ("status", "successful"))
    assert samples[("shepherd_runs", runs)] == 2
    failed = (("playbook", "fail.yml"), ("status", "failed"))
    assert samples[("shepherd_runs", failed)] == 1
    assert samples[("shepherd_runs_running", ())] == 2
    assert samples[("shepherd_runs_stuck", ())] == 1
    ping = ("playbook", "ping.yml")
    bucket = "shepherd_run_duration_seconds_bucket"
    assert samples[(bucket, (("le", "5.0"), ping))] == 1
    assert samples[(bucket, (("le", "15.0"), ping))] == 3
    assert samples[(bucket, (("le", "120.0"), ping))] == 4
    assert samples[(bucket, (("le", "+Inf"), ping))] == 4
    assert samples[("shepherd_run_duration_seconds_count", (ping,))] == 4
    total = samples[("shepherd_run_duration_seconds_sum", (ping,))]
    assert abs(total - 123) < 0.01
    rule = "shepherd_sweep_finalized_runs_total"
    assert samples[(rule, (("rule", "stale_heartbeat"),))] == 1
    assert samples[(rule, (("rule", "horse_gone"),))] == 1
    assert samples[(rule, (("rule", "job_lost"),))] == 0
    pending = (("status", "pending"),)
    assert samples[("shepherd_notification_deliveries", pending)] == 1


def test_metrics_redis_figures(app, client, redis_client):
    counts = {"stale_heartbeat": 2, "lost_queued": 0, "duration_ms": 3.5}
    redis_client.set(
        LAST_SWEEP_KEY,
        json.dumps({"at": time.time() - 12, "host": "h", "counts": counts}),
    )

    samples = scrape(client)

    assert samples[("shepherd_redis_up", ())] == 1
    assert samples[("shepherd_queue_depth", ())] == 0
    assert samples[("shepherd_workers_alive", ())] == 0
    assert 11 < samples[("shepherd_sweep_age_seconds", ())] < 60
    last = "shepherd_last_sweep_runs"
    assert samples[(last, (("rule", "stale_heartbeat"),))] == 2
    assert (last, (("rule", "duration_ms"),)) not in samples


def test_metrics_without_redis(shepherd_env, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "unix:///nonexistent/redis.sock")
    app = create_app({"TESTING": True})
    with app.app_context():
        db.create_all()

    samples = scrape(app.test_client())

    assert samples[("shepherd_redis_up", ())] == 0
    assert ("shepherd_runs_running", ()) in samples
    with app.app_context():
        db.engine.dispose()


def test_healthz_fails_without_worker_or_scheduler(app, client, redis_client):
    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "fail"
    assert sorted(body["failing"]) == ["scheduler", "workers"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is True


def test_healthz_stale_sweep_fails(app, client, redis_client):
    too_old = 3 * app.config["SWEEP_INTERVAL"] + 1
    redis_client.set(LAST_SWEEP_KEY, json.dumps({"at": time.time() - too_old}))

    body = client.get("/healthz").get_json()

    assert "scheduler" in body["failing"]
    assert body["checks"]["scheduler"]["sweep_age"] >= too_old


def test_healthz_ok_with_worker_and_scheduler(app, client, processes):
    processes.worker()
    processes.scheduler()

    response = wait_for(
        lambda: (r := client.get("/healthz")).status_code == 200 and r,
        30,
        message="/healthz to return 200",
    )

    body = response.get_json()
    assert body["failing"] == []
    assert body["checks"]["workers"]["count"] == 1
    assert (
        body["checks"]["scheduler"]["sweep_age"]
        < body["checks"]["scheduler"]["max_age"]
    )


def test_healthz_forgets_killed_worker(app, client, processes, redis_client):
    worker = processes.worker(env={"WORKER_TTL": "16"})
    body = client.get("/healthz").get_json()
    assert body["checks"]["workers"]["count"] == 1
    key = f"rq:worker:{worker.name}"
    # RQ keeps a worker's key WORKER_TTL + 60 s after its last heartbeat.
    assert 0 < redis_client.ttl(key) <= 16 + 60

    worker.send(signal.SIGKILL)
    wait_for(lambda: not worker.alive(), 10, message="the worker to die")
    redis_client.expire(key, 1)  # as if those seconds had passed

    body = wait_for(
        lambda: (b := client.get("/healthz").get_json())["checks"]["workers"]["count"]
        == 0
        and b,
        10,
        message="/healthz to stop counting the killed worker",
    )
    assert "workers" in body["failing"]


def test_healthz_names_redis_down(shepherd_env, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "unix:///nonexistent/redis.sock")
    app = create_app({"TESTING": True})

    response = app.test_client().get("/healthz")

    assert response.status_code == 503
    body = response.get_json()
    assert set(body["failing"]) == {"redis", "workers", "scheduler"}
    assert "nonexistent" in body["checks"]["redis"]["error"]
    with app.app_context():
        db.engine.dispose()


def test_metrics_under_gunicorn_workers(app, shepherd_env, tmp_path):
    with app.app_context():
        for _ in range(3):
            add_run("failed", "fail.yml", duration=2)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "webapp:create_app()",
        ],
        cwd=ROOT,
        env={**os.environ, **shepherd_env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _get(port, "/healthz"), 60, message="gunicorn to answer")

        bodies = [_get(port, "/metrics") for _ in range(12)]
    finally:
        server.terminate()
        server.wait(30)
        log.close()

    line = 'shepherd_runs{playbook="fail.yml",status="failed"} 3.0'
    assert all(line in body for body in bodies)
    assert all(
        'shepherd_run_duration_seconds_count{playbook="fail.yml"} 3.0' in body
        for body in bodies
    )


def _get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()
    except OSError:
        return None
