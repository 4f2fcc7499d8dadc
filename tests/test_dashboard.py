"""The dashboard figures: chart series, percentiles, OS families, counts and alerts."""

import json
import time
from datetime import timedelta

import pytest
from conftest import write_inventory
from sqlalchemy import event, insert, text

from jobs.sweep import LAST_SWEEP_KEY
from webapp import dashboard
from webapp.extensions import db
from webapp.models import Deployment, database_time


def add_runs(rows):
    defaults = {
        "playbook": "ping.yml",
        "target": "localhost",
        "timeout": 60,
        "trigger": "manual",
        "extra_vars": {},
        "check_mode": False,
        "launched_by": "test",
        "attempt": 1,
        "requeue_count": 0,
        "output_offset": 0,
    }
    db.session.execute(insert(Deployment), [{**defaults, **row} for row in rows])
    db.session.commit()


def ended(now, status, seconds, ago=timedelta(minutes=10), **fields):
    started = now - ago
    return {
        "status": status,
        "queued_at": started,
        "started_at": started,
        "finished_at": started + timedelta(seconds=seconds),
        "reason": None if status == "successful" else "failed on localhost",
        **fields,
    }


@pytest.fixture
def debian_app(shepherd_env):
    """An app whose inventory adds web1 (Debian, group debian) and box1 (no family)."""
    from webapp import create_app

    write_inventory(
        shepherd_env["INVENTORY"],
        {"web1": {"group": "debian", "os_family": "Debian"}, "box1": {}},
    )
    app = create_app({"TESTING": True})
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_duration_percentiles_nearest_rank(app):
    with app.app_context():
        now = database_time()
        add_runs([ended(now, "successful", s) for s in range(1, 21)])
        add_runs([ended(now, "failed", 5, playbook="fail.yml")])
        add_runs([ended(now, "canceled", 999)])

        rows = dashboard.durations(now - timedelta(days=1))

    assert [r["playbook"] for r in rows] == ["fail.yml", "ping.yml"]
    assert rows[0]["runs"] == 1
    assert rows[0]["p50"] == pytest.approx(5, abs=0.01)
    assert rows[0]["p95"] == pytest.approx(5, abs=0.01)
    assert rows[1]["runs"] == 20
    assert rows[1]["p50"] == pytest.approx(10, abs=0.01)
    assert rows[1]["p95"] == pytest.approx(19, abs=0.01)


def test_stats_series_by_status_and_rate(app, client):
    with app.app_context():
        now = database_time()
        add_runs(
            [
                ended(now, "successful", 3),
                ended(now, "successful", 3),
                ended(now, "failed", 3),
                ended(now, "successful", 3, ago=timedelta(days=3)),
                ended(now, "successful", 3, ago=timedelta(days=40)),
            ]
        )

    stats = client.get("/api/stats").get_json()

    per_hour = stats["per_hour"]
    assert len(per_hour["labels"]) == 24
    assert sum(per_hour["statuses"]["successful"]) == 2
    assert sum(per_hour["statuses"]["failed"]) == 1
    assert per_hour["statuses"]["failed"][-1] + per_hour["statuses"]["failed"][-2] == 1
    per_day = stats["per_day"]
    assert len(per_day["labels"]) == 30
    assert sum(per_day["statuses"]["successful"]) == 3
    assert stats["success_rate"]["last_24h"] == pytest.approx(2 / 3)
    assert stats["success_rate"]["last_30d"] == pytest.approx(3 / 4)


def test_runs_by_os_family_of_target(debian_app):
    with debian_app.app_context():
        now = database_time()
        add_runs(
            [
                ended(now, "successful", 1),
                ended(now, "successful", 1, target="web1"),
                ended(now, "successful", 1, target="debian"),
                ended(now, "failed", 1, target="all"),
                ended(now, "failed", 1, target="box1", playbook="update-windows.yml"),
                ended(now, "failed", 1, target="box1", playbook="sleep.yml"),
            ]
        )

        families = dashboard.os_families(now - timedelta(days=1))

    # localhost is Linux and web1 Debian, so "all" counts as Linux. box1 has
    # no os_family, so the playbook's header decides, if it has one.
    assert families == {"Debian": 2, "Linux": 2, "Windows": 1, "Unknown": 1}


def test_alerts_for_failures_stuck_and_no_processes(app, redis_client):
    app.config["FAILURE_ALERT_THRESHOLD"] = 2
    with app.app_context():
        now = database_time()
        add_runs([ended(now, "failed", 1), ended(now, "timeout", 1)])
        add_runs(
            [
                {
                    "status": "running",
                    "queued_at": now,
                    "started_at": now - timedelta(hours=3),
                    "heartbeat_at": now,
                }
            ]
        )

        summary = dashboard.summary()

    codes = [alert["code"] for alert in summary["alerts"]]
    assert codes == ["failures", "stuck", "no_worker", "no_scheduler"]
    assert summary["failures_last_hour"] == 2
    assert summary["stuck"] == 1
    assert summary["running"] == 1
    assert summary["workers"] == 0
    assert summary["sweep_age"] is None


def test_fresh_sweep_means_scheduler_alive(app, redis_client):
    interval = app.config["SWEEP_INTERVAL"]
    redis_client.set(LAST_SWEEP_KEY, json.dumps({"at": time.time() - interval}))
    with app.app_context():
        fresh = dashboard.summary()
    redis_client.set(LAST_SWEEP_KEY, json.dumps({"at": time.time() - 4 * interval}))
    with app.app_context():
        old = dashboard.summary()

    assert fresh["scheduler_alive"] is True
    assert "no_scheduler" not in [a["code"] for a in fresh["alerts"]]
    assert old["scheduler_alive"] is False
    assert "no_scheduler" in [a["code"] for a in old["alerts"]]


def test_live_worker_counted(app, processes):
    processes.worker()

    with app.app_context():
        summary = dashboard.summary()

    assert summary["workers"] == 1
    assert "no_worker" not in [a["code"] for a in summary["alerts"]]


@pytest.mark.slow
def test_stats_queries_read_covering_indexes(app):
    """A year of history, 100,000 runs: the 30-day figures read index ranges."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        pytest.skip("reads SQLite's EXPLAIN QUERY PLAN")
    with app.app_context():
        now = database_time()
        add_runs(
            [
                ended(
                    now,
                    ("successful", "successful", "failed", "canceled")[i % 4],
                    i % 300,
                    ago=timedelta(seconds=315 * i),
                )
                for i in range(100_000)
            ]
        )
        db.session.execute(text("ANALYZE"))
        statements = []

        def record(conn, cursor, statement, parameters, *rest):
            statements.append((statement, parameters))

        event.listen(db.engine, "before_cursor_execute", record)
        try:
            dashboard.stats()
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        connection = db.session.connection()
        plans = [
            [
                row[-1]
                for row in connection.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + statement, parameters
                )
            ]
            for statement, parameters in statements
            if "FROM deployments" in statement
        ]

    assert len(plans) >= 7
    for plan in plans:
        assert not any(line.startswith("SCAN deployments") for line in plan), plan
    covering = [
        plan
        for plan in plans
        if any("COVERING INDEX ix_deployments_" in line for line in plan)
    ]
    assert len(covering) >= 5
