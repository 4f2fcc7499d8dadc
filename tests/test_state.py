"""The run state machine and the sweep rules, on a real database and Redis."""

from datetime import timedelta

from conftest import launch

from jobs import state, sweep
from webapp import history
from webapp.extensions import db
from webapp.models import (
    Attempt,
    Deployment,
    HostLease,
    OutputChunk,
    RunStatus,
    database_time,
    utcnow,
)
from webapp.redis_conn import get_queue


def make_run(status="running", **fields):
    run = Deployment(
        playbook="ping.yml", target="localhost", timeout=60, status=status, **fields
    )
    db.session.add(run)
    db.session.commit()
    return run


def test_first_terminal_status_wins(app):
    with app.app_context():
        run = make_run(attempt=1)

        assert state.finish(
            run.id, RunStatus.ABANDONED, "worker gone", decided_by="sweep"
        )
        assert not state.finish(
            run.id, RunStatus.SUCCESSFUL, attempt=1, decided_by="worker"
        )
        assert not state.finish(run.id, RunStatus.FAILED, "late", decided_by="worker")

        db.session.refresh(run)
        assert run.status == "abandoned"
        assert run.reason == "worker gone"


def test_superseded_attempt_cannot_write(app):
    with app.app_context():
        run = make_run(attempt=2)

        assert not state.heartbeat(run.id, 1)
        assert not state.finish(
            run.id, RunStatus.SUCCESSFUL, attempt=1, decided_by="worker"
        )
        assert state.heartbeat(run.id, 2)
        assert state.finish(
            run.id, RunStatus.SUCCESSFUL, attempt=2, decided_by="worker"
        )


def test_explanation_appended_once(app):
    with app.app_context():
        run = make_run()

        for _ in range(3):
            state.finish(
                run.id, RunStatus.ABANDONED, "gone", decided_by="sweep", explain=True
            )

        texts = [
            c.text
            for c in db.session.query(OutputChunk).filter_by(deployment_id=run.id)
        ]
        assert texts == ["\n[shepherd] abandoned: gone\n"]


def test_non_successful_ending_needs_reason(app):
    with app.app_context():
        run = make_run()
        try:
            state.finish(run.id, RunStatus.FAILED, None, decided_by="sweep")
        except ValueError as exc:
            assert "needs a reason" in str(exc)
        else:
            raise AssertionError("a failed ending without a reason was accepted")


def test_stale_heartbeat_sweep_rule(app, redis_client):
    with app.app_context():
        now = database_time()
        stale = make_run(
            heartbeat_at=now - timedelta(seconds=60),
            worker_name="w",
            hostname="elsewhere",
        )
        fresh = make_run(heartbeat_at=now, worker_name="w", hostname="elsewhere")

        assert sweep.end_stale_heartbeats(redis_client, app.config) == 1

        db.session.refresh(stale)
        db.session.refresh(fresh)
        assert stale.status == "abandoned"
        assert stale.verdict["evidence"]["heartbeat_age"] >= 60
        assert stale.verdict["evidence"]["grace"] == app.config["HEARTBEAT_GRACE"]
        assert fresh.status == "running"


def test_finish_many_ends_runs_together(app, redis_client):
    with app.app_context():
        quiet_since = database_time() - timedelta(seconds=120)
        runs = [
            make_run(
                attempt=1,
                heartbeat_at=quiet_since,
                worker_name=f"w{number}",
                hostname=f"gone-{number}",
                progress={"host_last_task": {f"web{number}": "Install packages"}},
            )
            for number in range(5)
        ]
        db.session.add_all(
            HostLease(host=f"web{number}", deployment_id=run.id)
            for number, run in enumerate(runs)
        )
        db.session.commit()
        judged = [
            state.Ending(run.id, "gone", "stale_heartbeat", {"n": 1}, run.heartbeat_at)
            for run in runs
        ]
        # A heartbeat lands for the last run after the judgement: it wins.
        assert state.heartbeat(runs[-1].id, 1)

        ended = state.finish_many(judged, RunStatus.ABANDONED, decided_by="sweep")

        assert sorted(ended) == sorted(run.id for run in runs[:-1])
        for number, run in enumerate(runs[:-1]):
            db.session.refresh(run)
            assert run.status == "abandoned"
            assert run.reason == "gone"
            assert run.verdict["decided_by"] == "sweep"
            assert run.verdict["evidence"] == {"n": 1}
            assert run.verdict["last_tasks"] == {f"web{number}": "Install packages"}
            texts = db.session.scalars(
                db.select(OutputChunk.text).filter_by(deployment_id=run.id)
            ).all()
            assert texts == ["\n[shepherd] abandoned: gone\n"]
            attempts = db.session.scalars(
                db.select(Attempt).filter_by(deployment_id=run.id)
            ).all()
            assert [(a.number, a.status) for a in attempts] == [(1, "abandoned")]
        db.session.refresh(runs[-1])
        assert runs[-1].status == "running"
        leased = db.session.scalars(db.select(HostLease.deployment_id)).all()
        assert leased == [runs[-1].id]
        assert state.finish_many(judged, RunStatus.ABANDONED, decided_by="sweep") == []


def test_lost_queued_job_requeued_once_then_failed(app, redis_client):
    with app.app_context():
        queue = get_queue(app.config, redis_client)
        old = utcnow() - timedelta(minutes=5)
        run = make_run(status="queued", queued_at=old, job_id="run-x-1", attempt=1)

        assert sweep.repair_queued(redis_client, queue, app.config) == 1
        db.session.refresh(run)
        assert run.status == "queued"
        assert run.attempt == 2
        assert queue.count == 1

        queue.empty()
        assert sweep.repair_queued(redis_client, queue, app.config) == 1
        db.session.refresh(run)
        assert run.status == "failed"
        assert "lost from Redis twice" in run.reason


def test_young_queued_run_left_alone(app, redis_client):
    with app.app_context():
        queue = get_queue(app.config, redis_client)
        make_run(status="queued", job_id="run-y-1")

        assert sweep.repair_queued(redis_client, queue, app.config) == 0


def test_health_flags_stuck_and_stalled(app):
    with app.app_context():
        now = utcnow()
        long_running = make_run(
            started_at=now - timedelta(hours=5.2), heartbeat_at=now, last_output_at=now
        )
        silent = make_run(
            started_at=now - timedelta(minutes=20),
            heartbeat_at=now,
            last_output_at=now - timedelta(minutes=15),
        )
        dead = make_run(
            started_at=now - timedelta(minutes=1),
            heartbeat_at=now - timedelta(minutes=1),
            last_output_at=now,
        )

        assert history.health(long_running, now)["stuck"]
        assert (
            history.health(long_running, now)["running_for_text"] == "running for 5.2 h"
        )
        assert "STUCK_AFTER" in history.health(long_running, now)["note"]
        assert not history.health(silent, now)["stuck"]
        assert history.health(silent, now)["stalled"]
        assert history.health(dead, now)["stuck"]
        assert "no heartbeat" in history.health(dead, now)["note"]


def test_cleanup_command_dry_run_and_real(app, runner, client):
    with app.app_context():
        old = utcnow() - timedelta(hours=8)
        stuck = make_run(
            started_at=old, heartbeat_at=old, trigger="schedule:3", hostname="elsewhere"
        )
        recent = make_run(started_at=utcnow(), heartbeat_at=utcnow())
        stuck_id, recent_id = stuck.id, recent.id

    dry = runner.invoke(
        args=["cleanup-stuck-deployments", "--dry-run", "--timeout-hours", "6"]
    )
    assert dry.exit_code == 0, dry.output
    assert "Cutoff:" in dry.output
    assert "Current time:" in dry.output
    assert f"run {stuck_id}: ping.yml on localhost (scheduled)" in dry.output
    assert "for 8.0 hours" in dry.output
    assert "nothing changed" in dry.output
    assert client.get(f"/api/deployments/{stuck_id}").get_json()["status"] == "running"

    real = runner.invoke(args=["cleanup-stuck-deployments", "--timeout-hours", "6"])
    assert real.exit_code == 0, real.output
    assert "1 marked abandoned" in real.output
    ended = client.get(f"/api/deployments/{stuck_id}").get_json()
    assert ended["status"] == "abandoned"
    assert "cleanup-stuck-deployments" in ended["reason"]
    assert "[shepherd] abandoned" in client.get(
        f"/api/deployments/{stuck_id}/output"
    ).get_data(as_text=True)
    assert client.get(f"/api/deployments/{recent_id}").get_json()["status"] == "running"


def test_cleanup_command_rejects_bad_hours(runner, app):
    result = runner.invoke(args=["cleanup-stuck-deployments", "--timeout-hours", "-1"])

    assert result.exit_code != 0
    assert "-1" in result.output


def test_launch_then_cancel_appends_reason(client, app):
    run = launch(client)

    client.post(f"/api/deployments/{run['id']}/cancel")

    output = client.get(f"/api/deployments/{run['id']}/output").get_data(as_text=True)
    assert "canceled by admin" in output
