"""Retention: the prune command, artifact folder cleanup and the scheduled prune."""

from datetime import timedelta
from pathlib import Path

import pytest
from conftest import wait_for
from sqlalchemy import func, select

from webapp import retention
from webapp.extensions import db
from webapp.models import Deployment, OutputChunk, utcnow


def add_run(app, status="successful", ended_ago=None, chunks=3, attempt=1):
    """Insert a run that ended ``ended_ago`` with output and an artifact folder."""
    now = utcnow()
    run = Deployment(
        playbook="ping.yml",
        target="localhost",
        timeout=60,
        status=status,
        extra_vars={},
        attempt=attempt,
        queued_at=now - (ended_ago or timedelta()) - timedelta(minutes=2),
        started_at=now - (ended_ago or timedelta()) - timedelta(minutes=1),
        finished_at=now - ended_ago if ended_ago is not None else None,
    )
    db.session.add(run)
    db.session.commit()
    for number in range(chunks):
        db.session.add(OutputChunk(deployment_id=run.id, text=f"line {number}\n"))
    db.session.commit()
    folder = Path(app.config["ARTIFACT_DIR"]) / f"{run.id}-{attempt}"
    (folder / "artifacts" / "run").mkdir(parents=True)
    (folder / "artifacts" / "run" / "stdout").write_text("output")
    return run.id, folder


def output_of(run_id):
    return db.session.scalars(
        select(OutputChunk.text)
        .where(OutputChunk.deployment_id == run_id)
        .order_by(OutputChunk.id)
    ).all()


def test_prune_dry_run_changes_nothing(app, runner):
    with app.app_context():
        old, old_folder = add_run(app, ended_ago=timedelta(days=100))
        add_run(app, ended_ago=timedelta(days=10))

    result = runner.invoke(args=["prune", "--older-than", "90d", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert "would delete 3 output chunk(s) of 1 run(s) and 1 artifact folder(s)" in (
        result.output
    )
    assert old_folder.exists()
    with app.app_context():
        assert len(output_of(old)) == 3


def test_prune_deletes_old_output_keeps_rows(app, runner):
    with app.app_context():
        old, old_folder = add_run(app, "failed", ended_ago=timedelta(days=100))
        recent, recent_folder = add_run(app, ended_ago=timedelta(days=10))
        running, running_folder = add_run(app, "running", chunks=2)

    result = runner.invoke(args=["prune", "--older-than", "90d"])

    assert result.exit_code == 0, result.output
    assert "deleted 3 output chunk(s) of 1 run(s) and 1 artifact folder(s)" in (
        result.output
    )
    assert not old_folder.exists()
    assert recent_folder.exists()
    assert running_folder.exists()
    with app.app_context():
        assert db.session.get(Deployment, old).status == "failed"
        pruned = output_of(old)
        assert len(pruned) == 1
        assert pruned[0].startswith(retention.PRUNED_NOTE)
        assert len(output_of(recent)) == 3
        assert len(output_of(running)) == 2


def test_prune_twice_keeps_one_note(app, runner):
    with app.app_context():
        old, _ = add_run(app, ended_ago=timedelta(days=100))

    runner.invoke(args=["prune", "--older-than", "90d"])
    second = runner.invoke(args=["prune", "--older-than", "90d"])

    assert "deleted 0 output chunk(s) of 0 run(s)" in second.output
    with app.app_context():
        assert len(output_of(old)) == 1


@pytest.mark.parametrize("value", ["abc", "0d", "-3d", "10x", ""])
def test_prune_rejects_bad_age(app, runner, value):
    result = runner.invoke(args=["prune", "--older-than", value])

    assert result.exit_code == 2
    assert "is not a valid age" in result.output


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86400), ("12h", 43200), ("30m", 1800), ("45s", 45), ("2", 172800)],
)
def test_parse_age_units(text, seconds):
    from webapp.config import parse_age

    assert parse_age(text) == seconds


def test_clean_artifacts_keeps_active_and_recent(app):
    app.config["ARTIFACT_RETENTION"] = 3600
    with app.app_context():
        _, old = add_run(app, ended_ago=timedelta(hours=2))
        _, recent = add_run(app, ended_ago=timedelta(minutes=5))
        _, running = add_run(app, "running")
        unknown = Path(app.config["ARTIFACT_DIR"]) / "99999-1"
        unknown.mkdir()
        other = Path(app.config["ARTIFACT_DIR"]) / "not-a-run"
        other.mkdir()

        deleted = retention.clean_artifacts(app.config)

    assert deleted == 1
    assert not old.exists()
    assert recent.exists()
    assert running.exists()
    assert unknown.exists()
    assert other.exists()


def test_housekeeping_prunes_once_per_interval(app, redis_client):
    app.config["PRUNE_OLDER_THAN"] = 90 * 86400
    with app.app_context():
        first_run, _ = add_run(app, ended_ago=timedelta(days=100))
        first = retention.housekeeping(redis_client, app.config)
        second_run, _ = add_run(app, ended_ago=timedelta(days=100))
        second = retention.housekeeping(redis_client, app.config)

        assert first["pruned"]["runs"] == 1
        assert second["pruned"] is None
        assert len(output_of(second_run)) == 3


def test_scheduler_prunes_on_start(app, processes, monkeypatch, shepherd_env):
    with app.app_context():
        old, folder = add_run(app, ended_ago=timedelta(days=40))
        recent, _ = add_run(app, ended_ago=timedelta(days=1))

    processes.scheduler(env={"PRUNE_OLDER_THAN": "30d"})

    def pruned():
        with app.app_context():
            db.session.remove()
            return len(output_of(old)) == 1

    wait_for(pruned, 30, message="the scheduler's prune")
    assert not folder.exists()
    with app.app_context():
        count = db.session.scalar(
            select(func.count()).where(OutputChunk.deployment_id == recent)
        )
        assert count == 3
