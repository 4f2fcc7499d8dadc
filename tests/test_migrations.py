"""Migrations: upgrading a database that already contains runs keeps every row."""

import json

from flask_migrate import upgrade
from sqlalchemy import inspect, text

from webapp import create_app
from webapp.extensions import db

FIRST_REVISION = "0001"


def insert_runs(connection, count):
    for number in range(count):
        connection.execute(
            text(
                "INSERT INTO deployments (playbook, target, extra_vars, check_mode, "
                "timeout, trigger, launched_by, status, reason, attempt, "
                "requeue_count, queued_at, output_offset) VALUES (:playbook, "
                "'localhost', :extra_vars, false, 60, 'manual', 'tester', 'failed', "
                ":reason, 1, 0, '2026-01-02 03:04:05', 0)"
            ),
            {
                "playbook": f"play-{number}.yml",
                "extra_vars": json.dumps({"n": number}),
                "reason": f"reason {number}",
            },
        )
    connection.execute(
        text(
            "INSERT INTO output_chunks (deployment_id, text, created_at) "
            "SELECT id, 'line of ' || playbook, queued_at FROM deployments"
        )
    )


def test_upgrade_from_first_revision_keeps_rows(shepherd_env):
    app = create_app({"TESTING": True})
    with app.app_context():
        upgrade(revision=FIRST_REVISION)
        with db.engine.begin() as connection:
            insert_runs(connection, 5)

        upgrade(revision="head")

        tables = inspect(db.engine).get_table_names()
        with db.engine.connect() as connection:
            version = connection.scalar(text("SELECT version_num FROM alembic_version"))
            runs = connection.execute(
                text("SELECT playbook, reason, extra_vars FROM deployments ORDER BY id")
            ).all()
            chunks = connection.scalar(text("SELECT count(*) FROM output_chunks"))
        db.engine.dispose()

    assert version != FIRST_REVISION
    assert "notification_deliveries" in tables
    assert [r.playbook for r in runs] == [f"play-{n}.yml" for n in range(5)]
    assert [r.reason for r in runs] == [f"reason {n}" for n in range(5)]
    extra_vars = runs[3].extra_vars
    if isinstance(extra_vars, str):  # SQLite returns JSON columns as text.
        extra_vars = json.loads(extra_vars)
    assert extra_vars == {"n": 3}
    assert chunks == 5


def test_upgraded_schema_matches_models(shepherd_env):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    app = create_app({"TESTING": True})
    with app.app_context():
        upgrade(revision="head")
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection)
            differences = compare_metadata(context, db.metadata)
        db.engine.dispose()

    assert differences == []
