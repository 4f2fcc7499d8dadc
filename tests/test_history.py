"""The history: filters, keyset pages, stuck runs, RQ state per page, indexes, output tails."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, insert, text

from jobs import queueing
from webapp import history
from webapp.extensions import db
from webapp.launch import queue, redis_connection
from webapp.models import Deployment, OutputChunk, utcnow


def add_runs(count, **fields):
    """Insert ``count`` runs in one statement; ``fields`` may hold callables of i."""
    now = utcnow()
    rows = []
    for i in range(count):
        row = {
            "playbook": "ping.yml",
            "target": "localhost",
            "timeout": 60,
            "status": "successful",
            "trigger": "manual",
            "queued_at": now,
            "extra_vars": {},
            "check_mode": False,
            "launched_by": "test",
            "attempt": 1,
            "requeue_count": 0,
            "output_offset": 0,
        }
        for key, value in fields.items():
            row[key] = value(i) if callable(value) else value
        rows.append(row)
    db.session.execute(insert(Deployment), rows)
    db.session.commit()


def ids(page):
    return [run.id for run in page.rows]


def test_until_date_includes_its_day(app):
    day = datetime(2026, 3, 10, tzinfo=UTC)
    with app.app_context():
        add_runs(3, queued_at=lambda i: day + timedelta(hours=13 * i))

        page = history.query_page({"since": "2026-03-10", "until": "2026-03-10"})
        later = history.query_page({"until": "2026-03-10T12:00"})

        assert ids(page) == [2, 1]
        assert ids(later) == [1]


def test_stuck_filter_pages_past_healthy_runs(app):
    now = utcnow()
    with app.app_context():
        add_runs(
            3,
            status="running",
            started_at=now - timedelta(minutes=5),
            heartbeat_at=now - timedelta(hours=1),
        )
        add_runs(
            60,
            status="running",
            started_at=now - timedelta(minutes=5),
            heartbeat_at=now,
        )

        first = history.query_page({"status": "stuck", "limit": "2"}, now=now)
        second = history.query_page(
            {"status": "stuck", "limit": "2", "before": first.next_before}, now=now
        )

        assert ids(first) == [3, 2]
        assert first.next_before == 2
        assert ids(second) == [1]
        assert second.next_before is None


def test_stuck_beside_another_status(app):
    now = utcnow()
    with app.app_context():
        add_runs(1, status="failed")
        add_runs(1, status="running", started_at=now, heartbeat_at=now)
        add_runs(
            1,
            status="running",
            started_at=now - timedelta(hours=3),
            heartbeat_at=now,
        )

        page = history.query_page({"status": "failed,stuck"}, now=now)

        assert ids(page) == [3, 1]


def test_stuck_badge_says_running_for(app):
    now = utcnow()
    run = Deployment(
        status="running",
        started_at=now - timedelta(hours=5.2),
        heartbeat_at=now - timedelta(seconds=40),
    )
    with app.app_context():
        health = history.health(run, now)

    assert health["stuck"] is True
    assert health["running_for_text"] == "running for 5.2 h"
    assert health["note"] == "no heartbeat for 40 s (grace 15 s)"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"status": "sleeping"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "31/01/2026"}, "until"),
        ({"before": "x"}, "before"),
        ({"limit": "0"}, "limit"),
    ],
)
def test_invalid_filters_name_the_field(app, args, field):
    with app.app_context(), pytest.raises(history.FilterError) as caught:
        history.query_page(args)

    assert caught.value.field == field


def test_rq_states_read_in_one_pipeline(app, redis_client):
    with app.app_context():
        add_runs(
            4,
            status=lambda i: "queued" if i < 3 else "running",
            job_id=lambda i: f"run-{i + 1}-1",
        )
        # Runs 1 and 2 are in the queue and run 3's job is gone. Run 4 is
        # running in SQL while RQ still has its job queued.
        for run_id in (1, 2, 4):
            queueing.enqueue_run(queue(), run_id, 1, 60)
        runs = history.query_page({}).rows
        connection = redis_connection()
        calls = {"pipelines": 0, "commands": 0}
        pipeline, execute_command = connection.pipeline, connection.execute_command

        def counting_pipeline(*args, **kwargs):
            calls["pipelines"] += 1
            return pipeline(*args, **kwargs)

        def counting_command(*args, **kwargs):
            calls["commands"] += 1
            return execute_command(*args, **kwargs)

        connection.pipeline = counting_pipeline
        connection.execute_command = counting_command
        try:
            views = history.rq_states(runs, connection)
        finally:
            del connection.pipeline, connection.execute_command

    assert calls == {"pipelines": 1, "commands": 0}
    assert views[1]["position"] == 1
    assert views[1]["warning"] is None
    assert views[2]["position"] == 2
    assert views[3]["status"] is None
    assert "RQ has no job" in views[3]["warning"]
    assert views[4]["warning"] == "RQ reports the job queued while it is running here"


def test_rq_states_report_unreachable_redis(app):
    app.config["REDIS_URL"] = "unix:///nonexistent/redis.sock"
    with app.app_context():
        add_runs(1, status="queued", job_id="run-1-1")

        views = history.rq_states(history.query_page({}).rows)

    assert views[1]["warning"].startswith("Redis unreachable")


def test_history_page_never_reads_output(app, client):
    statements = []
    with app.app_context():
        add_runs(20, status=lambda i: "running" if i % 2 else "failed", job_id="j")
        db.session.add(OutputChunk(deployment_id=1, text="secret output"))
        db.session.commit()
        engine = db.engine

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        response = client.get("/runs")
        api = client.get("/api/deployments")
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert response.status_code == 200
    assert api.status_code == 200
    assert "secret output" not in response.get_data(as_text=True)
    assert statements
    for statement in statements:
        assert "output_chunks" not in statement
        assert "extra_vars" not in statement
        assert "progress" not in statement


# Filters and the index each must search (None: a scan in id order, which
# LIMIT stops early).
FILTERS = [
    ({}, None),
    ({"status": "failed"}, "ix_deployments_status_id"),
    ({"status": "stuck"}, "ix_deployments_status_id"),
    ({"status": "active"}, "ix_deployments_status_id"),
    ({"status": "queued,running,stuck"}, "ix_deployments_status_id"),
    ({"playbook": "slow.yml"}, "ix_deployments_playbook_id"),
    ({"target": "web1"}, "ix_deployments_target_id"),
    ({"trigger": "manual"}, "ix_deployments_trigger_id"),
    ({"trigger": "schedule"}, None),
    ({"since": "2026-01-01"}, None),
    ({"since": "2026-01-01", "until": "2026-01-02"}, "ix_deployments_queued_at"),
    ({"playbook": "ping.yml", "status": "timeout"}, "_id"),
    ({"before": "500"}, "PRIMARY KEY"),
]


def query_plans(args):
    """Return the SQLite query plans of the statements one page query runs."""
    statements = []

    def record(conn, cursor, statement, parameters, *rest):
        statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        history.query_page(args)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    connection = db.session.connection()
    return [
        [
            row[-1]
            for row in connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement, parameters
            )
        ]
        for statement, parameters in statements
        if "FROM deployments" in statement
    ]


@pytest.mark.slow
def test_list_queries_use_indexes_with_100k_runs(app):
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        pytest.skip("reads SQLite's EXPLAIN QUERY PLAN")
    start = datetime(2025, 12, 1, tzinfo=UTC)
    statuses = ["successful"] * 6 + ["failed", "timeout", "canceled", "running"]
    with app.app_context():
        add_runs(
            100_000,
            playbook=lambda i: ("ping.yml", "slow.yml", "facts.yml")[i % 3],
            target=lambda i: ("localhost", "web1", "local")[i % 3 - 1],
            status=lambda i: statuses[i % len(statuses)],
            trigger=lambda i: "schedule:nightly" if i % 7 == 0 else "manual",
            queued_at=lambda i: start + timedelta(seconds=40 * i),
        )
        db.session.execute(text("ANALYZE"))

        for args, index in FILTERS:
            plans = query_plans(args)
            assert plans, args
            for plan in plans:
                # A scan that must be sorted first reads every matching row.
                assert not any("TEMP B-TREE" in line for line in plan) or (
                    index == "ix_deployments_queued_at"
                ), (args, plan)
                if index:
                    assert any(index in line for line in plan), (args, plan)
                else:
                    assert plan == ["SCAN deployments"], (args, plan)
