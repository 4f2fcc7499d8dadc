"""Automatic retries: policy parsing, the retry decision, and real runs retried.

The run tests use real worker and scheduler processes, real ansible-playbook,
a real SSH client against a closed loopback port and real signals. Each
writes its own playbook, with its retry policy in the header, into the
test's playbook folder.
"""

import time
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import pytest
from conftest import (
    free_port,
    get_run,
    launch,
    wait_for,
    wait_output,
    wait_status,
    write_inventory,
)

from jobs import retries, state, sweep
from webapp.extensions import db
from webapp.models import Attempt, Deployment, RunStatus, database_time
from webapp.redis_conn import get_queue

TERMINAL = {"successful", "failed", "timeout", "canceled", "abandoned"}
# Short sweeps, so a due retry is enqueued within about a second.
FAST_SWEEP = {"SWEEP_INTERVAL": "0.5"}

PING_TASKS = """\
- name: Ping
  hosts: all
  gather_facts: false
  tasks:
    - name: Reach the host
      ansible.builtin.ping:
"""


def write_playbook(shepherd_env, name, header, body):
    """Write a playbook with ``header`` lines (``key: value``) into PLAYBOOK_DIR."""
    lines = "".join(f"# {key}: {value}\n" for key, value in header.items())
    path = Path(shepherd_env["PLAYBOOK_DIR"]) / name
    path.write_text(lines + body)
    return name


def use_closed_port_host(app, shepherd_env):
    """Add host ``closed``: SSH to a loopback port where nothing listens."""
    path = write_inventory(
        Path(shepherd_env["INVENTORY"]),
        {
            "closed": {
                "group": "ssh",
                "ansible_host": "127.0.0.1",
                "ansible_port": free_port(),
                "ansible_user": "root",
                "ansible_ssh_common_args": (
                    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                    "-o ConnectTimeout=5"
                ),
            }
        },
    )
    from webapp.catalog import Inventory

    app.extensions["inventory"] = Inventory(path)


def output_of(client, run_id, attempt=None):
    query = f"?attempt={attempt}" if attempt is not None else ""
    response = client.get(f"/api/deployments/{run_id}/output{query}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def history_row(client, run_id):
    rows = client.get("/api/deployments").get_json()["deployments"]
    return next(row for row in rows if row["id"] == run_id)


def seconds_between(earlier, later):
    return (
        datetime.fromisoformat(later) - datetime.fromisoformat(earlier)
    ).total_seconds()


# Policy parsing.

DEFAULT = retries.RetryPolicy()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({}, DEFAULT),
        (
            {"retry_attempts": "3"},
            retries.RetryPolicy(3, (30.0,), retries.DEFAULT_RETRY_ON, False),
        ),
        (
            {
                "retry_attempts": "4",
                "retry_backoff": "10, 30",
                "retry_on": "unreachable, timeout",
                "idempotent": "true",
            },
            retries.RetryPolicy(
                4, (10.0, 30.0), frozenset({"unreachable", "timeout"}), True
            ),
        ),
        (
            {"retry_attempts": "2", "retry_on": "any", "idempotent": "no"},
            retries.RetryPolicy(2, (30.0,), frozenset({"any"}), False),
        ),
    ],
)
def test_policy_parsed_from_header(header, expected):
    assert retries.parse_policy(header, DEFAULT) == expected


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"retry_attempts": "0"}, "retry_attempts '0' is invalid"),
        ({"retry_attempts": "three"}, "retry_attempts 'three' is invalid"),
        ({"retry_backoff": "10, soon"}, "retry_backoff '10, soon' is invalid"),
        ({"retry_backoff": "-5"}, "retry_backoff '-5' is invalid"),
        ({"retry_on": "unreachable, flaky"}, "retry_on 'unreachable, flaky'"),
        ({"idempotent": "maybe"}, "idempotent 'maybe' is invalid"),
    ],
)
def test_policy_rejects_invalid_values(header, message):
    with pytest.raises(retries.PolicyError, match=message):
        retries.parse_policy(header, DEFAULT)


def test_backoff_repeats_last_delay():
    policy = retries.RetryPolicy(5, (10.0, 30.0))

    assert policy.delay(1) == 10.0
    assert policy.delay(2) == 30.0
    assert policy.delay(4) == 30.0


def test_invalid_policy_means_no_retries(app, shepherd_env):
    name = write_playbook(
        shepherd_env, "bad_policy.yml", {"retry_attempts": "lots"}, PING_TASKS
    )
    with app.app_context():
        assert retries.policy_for(name).max_attempts == 1


# The decision and the sweep rules, on a real database and Redis.


def make_run(playbook, status="running", **fields):
    run = Deployment(
        playbook=playbook, target="localhost", timeout=60, status=status, **fields
    )
    db.session.add(run)
    db.session.commit()
    return run


def test_ending_queues_retry_in_same_transaction(app, shepherd_env):
    name = write_playbook(
        shepherd_env,
        "flaky.yml",
        {"retry_attempts": "2", "retry_backoff": "60", "retry_on": "abandoned"},
        PING_TASKS,
    )
    with app.app_context():
        run = make_run(name, attempt=1, job_id="run-x-1", worker_name="w1")

        assert state.finish(run.id, RunStatus.ABANDONED, "gone", decided_by="sweep")

        db.session.refresh(run)
        assert run.status == "queued"
        assert run.attempt == 2
        assert run.retries == 1
        assert run.max_attempts == 2
        assert run.job_id is None
        assert retries.is_waiting(run)
        delay = (run.retry_at - database_time()).total_seconds()
        assert 50 < delay <= 60
        attempts = db.session.scalars(select_attempts(run.id)).all()
        assert [(a.number, a.status, a.worker_name) for a in attempts] == [
            (1, "abandoned", "w1")
        ]
        assert attempts[0].retry_note == "retried as attempt 2 after 60 s"


def test_last_attempt_ends_terminal(app, shepherd_env):
    name = write_playbook(
        shepherd_env,
        "flaky.yml",
        {"retry_attempts": "2", "retry_on": "abandoned"},
        PING_TASKS,
    )
    with app.app_context():
        run = make_run(name, attempt=3, retries=1, max_attempts=2)

        assert state.finish(run.id, RunStatus.ABANDONED, "gone", decided_by="sweep")

        db.session.refresh(run)
        assert run.status == "abandoned"
        assert run.attempt == 3
        note = db.session.scalars(select_attempts(run.id)).one().retry_note
        assert note == "not retried: attempt 2 of 2 was the last"


def test_unlisted_ending_not_retried(app, shepherd_env):
    name = write_playbook(
        shepherd_env,
        "flaky.yml",
        {"retry_attempts": "3", "retry_on": "unreachable"},
        PING_TASKS,
    )
    with app.app_context():
        run = make_run(name)

        state.finish(run.id, RunStatus.TIMEOUT, "too slow", decided_by="timeout")

        db.session.refresh(run)
        assert run.status == "timeout"
        note = db.session.scalars(select_attempts(run.id)).one().retry_note
        assert note.startswith("not retried: it ended timeout")


@pytest.mark.parametrize(
    ("check_mode", "expected_status"), [(False, "failed"), (True, "queued")]
)
def test_changed_attempt_retried_only_in_check_mode(
    app, shepherd_env, check_mode, expected_status
):
    name = write_playbook(
        shepherd_env,
        "flaky.yml",
        {"retry_attempts": "2", "retry_on": "any"},
        PING_TASKS,
    )
    with app.app_context():
        run = make_run(name, check_mode=check_mode)

        state.finish(
            run.id,
            RunStatus.FAILED,
            "failed on localhost",
            decided_by="worker",
            stats={"localhost": {"ok": 1, "changed": 1, "failures": 1}},
        )

        db.session.refresh(run)
        assert run.status == expected_status


def test_old_attempt_handler_leaves_retry_alone(app, shepherd_env):
    from jobs import handlers

    with app.app_context():
        run = make_run(
            "ping.yml",
            status="queued",
            attempt=2,
            retries=1,
            hostname=shepherd_env["SHEPHERD_HOSTNAME"],
        )

        ended = handlers.end_here(
            run.id,
            1,
            RunStatus.FAILED,
            "the job failed",
            reason_code="job_failed",
            decided_by="worker",
        )

        assert not ended
        db.session.refresh(run)
        assert run.status == "queued"
        assert run.attempt == 2


def select_attempts(run_id):
    from sqlalchemy import select

    return select(Attempt).where(Attempt.deployment_id == run_id).order_by(Attempt.id)


def test_due_retry_claimed_once(app, redis_client):
    with app.app_context():
        past = database_time() - timedelta(seconds=1)
        run = make_run("ping.yml", status="queued", attempt=2, retries=1, retry_at=past)

        assert retries.claim(run.id, 2, "run-1-2")
        assert not retries.claim(run.id, 2, "run-1-2")
        assert (
            retries.enqueue_due(redis_client, get_queue(app.config, redis_client)) == 0
        )


def test_sweep_enqueues_due_retry_only(app, redis_client):
    with app.app_context():
        now = database_time()
        queue = get_queue(app.config, redis_client)
        old = now - timedelta(hours=1)
        due = make_run(
            "ping.yml", "queued", attempt=2, retries=1, retry_at=now, queued_at=old
        )
        later = make_run(
            "ping.yml",
            "queued",
            attempt=2,
            retries=1,
            retry_at=now + timedelta(seconds=60),
            queued_at=old,
        )

        counts = sweep.sweep(redis_client, queue)

        assert counts["retry_due"] == 1
        assert counts["lost_queued"] == 0
        assert queue.job_ids == [f"run-{due.id}-2"]
        db.session.refresh(later)
        assert later.status == "queued"
        assert later.attempt == 2
        assert later.job_id is None
        assert later.requeue_count == 0


# Real runs with workers and a scheduler.


def test_unreachable_retried_twice_then_failed(app, client, processes, shepherd_env):
    use_closed_port_host(app, shepherd_env)
    name = write_playbook(
        shepherd_env,
        "reach.yml",
        {"retry_attempts": "3", "retry_backoff": "4, 1", "retry_on": "unreachable"},
        PING_TASKS,
    )
    worker = processes.worker()
    # Two schedulers sweep at once: each retry must still run once.
    processes.scheduler(env=FAST_SWEEP)
    processes.scheduler(env=FAST_SWEEP)

    run = launch(client, name, "closed", timeout=120)
    waiting = wait_for(
        lambda: (row := history_row(client, run["id"]))["retry"] and row,
        60,
        message="the first retry to wait",
    )

    assert waiting["status"] == "queued"
    assert waiting["retry"]["label"] == "attempt 2 of 3"
    assert waiting["retry"]["note"].startswith("retrying in ")
    assert "after: unreachable: closed" in waiting["retry"]["note"]
    page = client.get("/runs").get_data(as_text=True)
    assert "attempt 2 of 3" in page

    done = wait_status(client, run["id"], TERMINAL, timeout=120)

    assert done["status"] == "failed"
    assert done["reason_code"] == "unreachable"
    assert done["attempt"] == 3
    assert done["retry"]["label"] == "ended after 3 attempts"
    attempts = done["attempts"]
    assert [a["number"] for a in attempts] == [1, 2, 3]
    assert [a["status"] for a in attempts] == ["failed"] * 3
    assert [a["reason_code"] for a in attempts] == ["unreachable"] * 3
    assert all(a["worker_name"] == worker.name for a in attempts)
    assert attempts[0]["retry_note"] == "retried as attempt 2 after 4 s"
    assert attempts[1]["retry_note"] == "retried as attempt 3 after 1 s"
    assert attempts[2]["retry_note"] == "not retried: attempt 3 of 3 was the last"
    first = output_of(client, run["id"], attempt=1)
    last = output_of(client, run["id"], attempt=3)
    assert "UNREACHABLE" in first
    assert "attempt 1 of 3 ended failed; retrying in 4 s" in first
    assert "UNREACHABLE" in last
    assert "retrying" not in last
    assert "not retried: attempt 3 of 3 was the last" in last
    assert output_of(client, run["id"]).count("UNREACHABLE") >= 3
    detail = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert 'id="attempts"' in detail
    # One execution per attempt, although two schedulers swept.
    log = worker.output()
    for number in (1, 2, 3):
        job = f"run {run['id']} (attempt {number}) (run-{run['id']}-{number})"
        assert log.count(job) == 1
    assert "not started, the run is no longer queued" not in log


def test_backoff_waits_between_attempts(app, client, processes, shepherd_env):
    use_closed_port_host(app, shepherd_env)
    name = write_playbook(
        shepherd_env,
        "reach.yml",
        {"retry_attempts": "2", "retry_backoff": "5", "retry_on": "unreachable"},
        PING_TASKS,
    )
    processes.worker()
    processes.scheduler(env=FAST_SWEEP)

    run = launch(client, name, "closed", timeout=120)
    done = wait_status(client, run["id"], TERMINAL, timeout=120)

    first, second = done["attempts"]
    gap = seconds_between(first["finished_at"], second["started_at"])
    # Database clock on both sides; the upper bound allows for slow sweeps.
    assert gap >= 5
    assert gap < 5 + 25


def test_killed_horse_retried_then_successful(
    app, client, processes, shepherd_env, tmp_path
):
    marker = tmp_path / "first-attempt-ran"
    name = write_playbook(
        shepherd_env,
        "once_slow.yml",
        {"retry_attempts": "3", "retry_backoff": "1", "retry_on": "abandoned"},
        """\
- name: Slow the first time only
  hosts: all
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: "before the sleep"
    - name: Sleep on the first attempt
      ansible.builtin.shell: >-
        if [ -e {{ marker }} ]; then echo second attempt;
        else touch {{ marker }}; sleep 120; fi
      changed_when: false
""",
    )
    worker = processes.worker()
    processes.scheduler(env=FAST_SWEEP)
    run = launch(client, name, "localhost", extra_vars={"marker": str(marker)})
    wait_output(client, run["id"], "before the sleep")
    wait_for(marker.exists, 30, message="the first attempt to sleep")

    psutil.Process(worker.horse_pid()).kill()
    done = wait_status(client, run["id"], TERMINAL, timeout=90)

    assert done["status"] == "successful"
    assert done["attempt"] == 2
    attempts = done["attempts"]
    assert [a["status"] for a in attempts] == ["abandoned", "successful"]
    assert attempts[0]["retry_note"] == "retried as attempt 2 after 1 s"
    assert attempts[1]["retry_note"] is None
    assert done["retry"]["label"] == "ended after 2 attempts"
    first = output_of(client, run["id"], attempt=1)
    assert "before the sleep" in first
    assert "[shepherd] abandoned" in first
    second = output_of(client, run["id"], attempt=2)
    assert "TASK [Sleep on the first attempt]" in second
    assert "[shepherd] abandoned" not in second
    assert done["stats"]["localhost"]["ok"] == 2
    assert worker.alive()


@pytest.mark.parametrize(
    ("idempotent", "expected_attempts"), [("false", 1), ("true", 2)]
)
def test_changed_then_failed_retried_only_if_idempotent(
    app, client, processes, shepherd_env, idempotent, expected_attempts
):
    name = write_playbook(
        shepherd_env,
        "change_then_fail.yml",
        {
            "retry_attempts": "2",
            "retry_backoff": "1",
            "retry_on": "any",
            "idempotent": idempotent,
        },
        """\
- name: Change, then fail
  hosts: all
  gather_facts: false
  tasks:
    - name: A task that reports a change
      ansible.builtin.command: "true"
    - name: A task that fails
      ansible.builtin.fail:
        msg: "failing on purpose"
""",
    )
    processes.worker()
    processes.scheduler(env=FAST_SWEEP)

    run = launch(client, name, "localhost")
    done = wait_status(client, run["id"], TERMINAL, timeout=90)
    time.sleep(2)  # several sweeps: none may bring the run back
    done = get_run(client, run["id"])

    assert done["status"] == "failed"
    assert done["reason_code"] == "playbook_failed"
    assert len(done["attempts"]) == expected_attempts
    assert done["attempts"][0]["stats"]["localhost"]["changed"] == 1
    if idempotent == "false":
        assert done["attempts"][0]["retry_note"] == (
            "not retried: it changed localhost and the playbook is not marked "
            "idempotent"
        )
        assert "not marked idempotent" in output_of(client, run["id"])


def test_canceled_run_not_retried(app, client, processes, shepherd_env):
    name = write_playbook(
        shepherd_env,
        "slow_any.yml",
        {"retry_attempts": "3", "retry_backoff": "1", "retry_on": "any"},
        (Path(shepherd_env["PLAYBOOK_DIR"]) / "sleep.yml").read_text(),
    )
    processes.worker()
    processes.scheduler(env=FAST_SWEEP)
    run = launch(client, name, "localhost", extra_vars={"seconds": 60})
    wait_output(client, run["id"], "before the sleep")

    response = client.post(f"/api/deployments/{run['id']}/cancel")
    assert response.status_code == 200
    time.sleep(3)  # several sweeps and the backoff: none may retry it
    done = get_run(client, run["id"])

    assert done["status"] == "canceled"
    assert done["attempt"] == 1
    assert [a["status"] for a in done["attempts"]] == ["canceled"]
    assert done["attempts"][0]["retry_note"] is None
    assert done["retry"] is None


def test_pending_retry_canceled(app, client, processes, shepherd_env):
    use_closed_port_host(app, shepherd_env)
    name = write_playbook(
        shepherd_env,
        "reach.yml",
        {"retry_attempts": "3", "retry_backoff": "2", "retry_on": "unreachable"},
        PING_TASKS,
    )
    processes.worker()
    run = launch(client, name, "closed", timeout=120)
    wait_for(lambda: get_run(client, run["id"])["retry"], 60, message="a pending retry")

    response = client.post(f"/api/deployments/{run['id']}/cancel")
    assert response.status_code == 200
    processes.scheduler(env=FAST_SWEEP)
    time.sleep(4)  # past the backoff, with sweeps running
    done = get_run(client, run["id"])

    assert done["status"] == "canceled"
    assert done["job_id"] is None
    assert [a["status"] for a in done["attempts"]] == ["failed", "canceled"]


def test_pending_retry_survives_redis_flush(
    app, client, processes, shepherd_env, redis_client
):
    use_closed_port_host(app, shepherd_env)
    name = write_playbook(
        shepherd_env,
        "reach.yml",
        {"retry_attempts": "2", "retry_backoff": "6", "retry_on": "unreachable"},
        PING_TASKS,
    )
    processes.worker()
    processes.scheduler(env=FAST_SWEEP)
    run = launch(client, name, "closed", timeout=120)
    wait_for(lambda: get_run(client, run["id"])["retry"], 60, message="a pending retry")

    redis_client.flushall()
    done = wait_status(client, run["id"], TERMINAL, timeout=90)

    assert done["status"] == "failed"
    assert done["attempt"] == 2
    assert [a["number"] for a in done["attempts"]] == [1, 2]
    assert done["attempts"][1]["reason_code"] == "unreachable"
