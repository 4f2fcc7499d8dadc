"""No false verdicts: healthy runs survive CPU load, skewed clocks, a frozen
sweeper, database and Redis hiccups.

Real worker and scheduler processes run real playbooks with short heartbeat
settings. Each case counts false verdicts, that is healthy runs that ended
with anything but their own success, and expects none.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import sqlalchemy
from conftest import get_run, launch, wait_for, wait_output, wait_status

from jobs import liveness, state, sweep
from webapp import history
from webapp.extensions import db
from webapp.models import Deployment, database_time

# These load the whole machine or measure time: they run alone (make test).
# Their harness (libfaketime preloaded into forking workers, CPU burners,
# SIGSTOP) can stall a run for reasons outside Shepherd. So a failure is
# retried twice, and pytest reports every rerun.
pytestmark = [pytest.mark.serial, pytest.mark.flaky(reruns=2)]

TERMINAL = {"successful", "failed", "timeout", "canceled", "abandoned"}
# One-second heartbeats and sweeps keep the suite fast; the grace is four
# heartbeats.
FAST = {
    "HEARTBEAT_INTERVAL": "1",
    "HEARTBEAT_GRACE": "4",
    "SWEEP_INTERVAL": "1",
    "STALL_WARNING": "60",
}
FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
FAKETIME_SHIM = Path(__file__).resolve().parent / "faketime"


def false_verdicts(client, run_ids):
    """Return the runs that did not end as their own successful playbook."""
    wrong = []
    for run_id in run_ids:
        run = get_run(client, run_id)
        verdict = run["verdict"] or {}
        if (
            run["status"] != "successful"
            or run["reason"]
            or verdict.get("decided_by") != "worker"
        ):
            wrong.append((run_id, run["status"], run["reason"], verdict))
    return wrong


def wait_all(client, run_ids, timeout):
    return [wait_status(client, run_id, TERMINAL, timeout) for run_id in run_ids]


@contextmanager
def cpu_burners(seconds):
    """Keep every core busy (one spinning process per core, plus one)."""
    code = (
        "import time\n"
        f"end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
    )
    burners = [
        subprocess.Popen([sys.executable, "-c", code])
        for _ in range((os.cpu_count() or 1) + 1)
    ]
    try:
        yield burners
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(10)


class RunWatcher:
    """Samples the rows of running runs: the largest heartbeat age, stall flags."""

    def __init__(self, app, run_ids):
        self.app = app
        self.run_ids = run_ids
        self.max_heartbeat_age = 0.0
        self.stalled = set()
        self.samples = 0

    def sample(self):
        """Record one sample; return True once every run has ended."""
        with self.app.app_context():
            now = database_time()
            runs = db.session.scalars(
                sqlalchemy.select(Deployment).where(Deployment.id.in_(self.run_ids))
            ).all()
            ended = 0
            for run in runs:
                if run.status != "running":
                    ended += run.status in TERMINAL
                    continue
                age = (now - run.heartbeat_at).total_seconds()
                self.max_heartbeat_age = max(self.max_heartbeat_age, age)
                if history.health(run, now)["stalled"]:
                    self.stalled.add(run.id)
            db.session.remove()
        self.samples += 1
        return ended == len(self.run_ids)

    def until_ended(self, timeout, every=0.25):
        wait_for(self.sample, timeout, every, message=f"runs {self.run_ids} to end")


def start_workers(processes, count, env):
    workers = [processes.worker(env=env, wait=False) for _ in range(count)]
    for worker in workers:
        wait_for(
            lambda worker=worker: "Listening on" in worker.output()
            or not worker.alive(),
            60,
            message=f"worker {worker.name} to listen",
        )
        assert worker.alive(), worker.output()
    return workers


@pytest.mark.slow
def test_cpu_saturation_no_false_verdict(app, client, processes):
    """Eight runs and spinning processes on every core.

    On a shared two-core machine the whole host stalls now and then, and
    SQLite's single write lock makes heartbeats wait for each other: ages of
    5 to 12 s were measured here, so this case allows a grace of 10 s.
    """
    app.config["STALL_WARNING"] = 60
    env = {**FAST, "HEARTBEAT_GRACE": "10"}
    workers = start_workers(processes, 8, env)
    processes.scheduler(env=env)

    with cpu_burners(seconds=150):
        runs = [
            launch(client, "sleep_shared.yml", extra_vars={"seconds": 20}, timeout=280)
            for _ in range(4)
        ] + [
            launch(client, "count.yml", extra_vars={"count": 20}, timeout=280)
            for _ in range(4)
        ]
        run_ids = [run["id"] for run in runs]
        watcher = RunWatcher(app, run_ids)
        watcher.until_ended(timeout=240)

    assert false_verdicts(client, run_ids) == []
    assert watcher.stalled == set()
    assert watcher.max_heartbeat_age < 10, (
        f"a heartbeat was {watcher.max_heartbeat_age:.1f} s old under load"
    )
    assert all(worker.alive() for worker in workers)


def faketime_env(offset):
    if not FAKETIME_LIBRARY.exists():
        pytest.fail(
            f"{FAKETIME_LIBRARY} is missing; install Debian's faketime package "
            "(bash .ci/system-packages)"
        )
    return {
        "LD_PRELOAD": str(FAKETIME_LIBRARY),
        "FAKETIME": offset,
        # Timeouts and sleeps keep real time; only the wall clock is off.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": str(FAKETIME_SHIM),
    }


@pytest.mark.slow
def test_skewed_clocks_no_false_verdict(app, client, processes, shepherd_env):
    """Workers ten minutes behind, a sweeper seven minutes ahead.

    With SQLite the database clock is the writer's own wall clock, so the
    skewed workers write heartbeats ten minutes old. A normal worker starting
    later cleans RQ's started registry, where the skewed workers' jobs have
    expired by its clock.
    """
    skewed_host = f"skewed-{uuid.uuid4().hex[:6]}"
    behind = {**FAST, **faketime_env("-10m"), "SHEPHERD_HOSTNAME": skewed_host}
    ahead = {**FAST, **faketime_env("+7m"), "SHEPHERD_HOSTNAME": "sweeper-ahead"}
    skewed_workers = start_workers(processes, 2, behind)
    scheduler = processes.scheduler(env=ahead)
    runs = [
        launch(client, "sleep_shared.yml", extra_vars={"seconds": 15}, timeout=120)
        for _ in range(2)
    ]
    for run in runs:
        wait_output(client, run["id"], "before the sleep", timeout=60)
    cleaner = processes.worker(env=FAST)

    wait_all(client, [run["id"] for run in runs], timeout=90)

    assert false_verdicts(client, [run["id"] for run in runs]) == []
    assert "Traceback" not in scheduler.output()

    # The same skewed sweeper still ends a run whose worker is really gone,
    # and records which clock it trusted.
    cleaner.stop()
    dead = launch(client, "sleep.yml", extra_vars={"seconds": 120}, timeout=280)
    wait_output(client, dead["id"], "before the sleep", timeout=60)
    horse = next(w.horse_pid() for w in skewed_workers if w.horse_pid())
    for worker in skewed_workers:  # no host-local check is left on their host
        worker.send(signal.SIGKILL)
    psutil.Process(horse).kill()
    done = wait_status(client, dead["id"], TERMINAL, timeout=30)

    assert done["status"] == "abandoned"
    assert done["reason_code"] == "stale_heartbeat"
    evidence = done["verdict"]["evidence"]
    assert evidence["clock"] == "sweeper monotonic"
    assert evidence["grace"] == 4
    assert evidence["heartbeat_age"] > 4
    assert evidence["database_age"] > 600


@pytest.mark.slow
def test_paused_sweeper_no_false_verdict(client, processes):
    processes.worker(env=FAST)
    scheduler = processes.scheduler(env={**FAST, "SHEPHERD_HOSTNAME": "sweeper-paused"})
    run = launch(client, "sleep.yml", extra_vars={"seconds": 25}, timeout=120)
    wait_output(client, run["id"], "before the sleep", timeout=60)

    # Frozen for longer than the grace, four times, at varying points of its
    # sweep loop.
    for pause in (5.0, 6.3, 5.7, 5.1):
        scheduler.send(signal.SIGSTOP)
        time.sleep(pause)
        scheduler.send(signal.SIGCONT)
        time.sleep(0.35)
    wait_status(client, run["id"], TERMINAL, timeout=60)

    assert false_verdicts(client, [run["id"]]) == []
    assert scheduler.alive()


def test_sweep_yields_to_heartbeat_during_judgement(app, redis_client, monkeypatch):
    """A sweep that read a stale heartbeat, then froze, while the worker kept beating."""
    with app.app_context():
        run = Deployment(
            playbook="sleep.yml",
            target="localhost",
            timeout=60,
            status="running",
            attempt=1,
            worker_name="w",
            hostname="elsewhere",
            heartbeat_at=database_time() - timedelta(seconds=60),
        )
        db.session.add(run)
        db.session.commit()

        def beat_meanwhile(connection, runs):
            assert state.heartbeat(run.id, 1)
            return [None] * len(runs)

        monkeypatch.setattr(sweep, "_rq_statuses", beat_meanwhile)
        ended = sweep.end_stale_heartbeats(redis_client, app.config)

        db.session.refresh(run)
        assert ended == 0
        assert run.status == "running"


class FakeRun:
    def __init__(self, heartbeat_at):
        self.id = 1
        self.attempt = 1
        self.heartbeat_at = heartbeat_at


@pytest.mark.parametrize(
    ("database_age", "expected_age", "clock"),
    [
        (3.0, 3.0, "database"),  # agrees with what the sweeper saw
        (600.0, 2.0, "sweeper monotonic"),  # writer's clock behind
        (-420.0, 2.0, "sweeper monotonic"),  # sweeper's clock behind
    ],
)
def test_heartbeat_watch_trusts_database_only_in_bounds(
    monkeypatch, database_age, expected_age, clock
):
    now = [100.0]
    monkeypatch.setattr(liveness.time, "monotonic", lambda: now[0])
    watch = liveness.HeartbeatWatch()
    watch.begin()
    watch.age(FakeRun("beat-1"), 0.5)
    watch.end()
    now[0] = 101.0
    watch.begin()
    watch.age(FakeRun("beat-2"), 0.2)  # a new beat, between 100 and 101
    watch.end()
    now[0] = 103.0
    watch.begin()

    age = watch.age(FakeRun("beat-2"), database_age)

    assert age.seconds == expected_age
    assert age.clock == clock


def test_heartbeat_watch_waits_a_grace_after_start(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(liveness.time, "monotonic", lambda: now[0])
    watch = liveness.HeartbeatWatch()
    watch.begin()

    first = watch.age(FakeRun("beat-1"), 3600.0)

    assert first.seconds == 0
    assert first.clock == "sweeper monotonic"


@contextmanager
def sqlite_held(path, seconds):
    """Hold SQLite's write lock on ``path`` from another process for ``seconds``."""
    code = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "c.execute('COMMIT')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, path, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
        holder.wait(seconds + 30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def assert_all_lines(client, run_id, count):
    output = client.get(f"/api/deployments/{run_id}/output").get_data(as_text=True)
    missing = [n for n in range(1, count + 1) if f"(item=line {n})" not in output]
    assert missing == []
    assert "counting done" in output


@pytest.mark.slow
def test_sqlite_long_writer_no_false_verdict(app, client, processes, shepherd_env):
    url = shepherd_env["DATABASE_URL"]
    if not url.startswith("sqlite"):
        pytest.skip("holds SQLite's write lock; this run uses PostgreSQL")
    env = {**FAST, "HEARTBEAT_GRACE": "6"}
    processes.worker(env=env)
    processes.worker(env=env)
    processes.scheduler(env=env)
    runs = [
        launch(client, "count.yml", extra_vars={"count": 45}, timeout=200)
        for _ in range(2)
    ]
    run_ids = [run["id"] for run in runs]
    wait_for(
        lambda: all(get_run(client, i)["status"] == "running" for i in run_ids),
        60,
        message="both runs to start",
    )
    watcher = RunWatcher(app, run_ids)

    # Two holds of half the grace, then one longer than the grace, while
    # both runs print: the sweep postpones its verdicts while it waits too.
    for seconds in (3, 3, 9):
        with sqlite_held(url.removeprefix("sqlite:///"), seconds) as holder:
            while holder.poll() is None:
                watcher.sample()
                time.sleep(0.25)
        time.sleep(1)
    watcher.until_ended(timeout=120)

    assert false_verdicts(client, run_ids) == []
    for run_id in run_ids:
        assert_all_lines(client, run_id, 45)
    assert watcher.max_heartbeat_age > 6, "the lock never delayed a heartbeat"


def terminate_backends(application_name):
    """Drop every PostgreSQL connection opened under ``application_name``."""
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://" + os.environ["TEST_DATABASE_URL"].split("://", 1)[1]
    )
    with engine.begin() as connection:
        count = connection.execute(
            sqlalchemy.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name"
            ),
            {"name": application_name},
        ).scalar()
    engine.dispose()
    return count


@pytest.mark.slow
def test_postgres_connections_dropped_no_false_verdict(client, processes, shepherd_env):
    url = shepherd_env["DATABASE_URL"]
    if not url.startswith("postgres"):
        pytest.skip("drops PostgreSQL connections; set TEST_DATABASE_URL")
    name = f"shepherd-verdicts-{uuid.uuid4().hex[:8]}"
    env = {**FAST, "DATABASE_URL": f"{url}&application_name={name}"}
    processes.worker(env=env)
    processes.worker(env=env)
    processes.scheduler(env=env)
    runs = [
        launch(client, "count.yml", extra_vars={"count": 30}, timeout=200)
        for _ in range(2)
    ]
    run_ids = [run["id"] for run in runs]
    wait_for(
        lambda: all(get_run(client, i)["status"] == "running" for i in run_ids),
        60,
        message="both runs to start",
    )

    dropped = 0
    for _ in range(5):
        dropped += terminate_backends(name)
        time.sleep(1.5)
    wait_all(client, run_ids, timeout=120)

    assert dropped > 0
    assert false_verdicts(client, run_ids) == []
    for run_id in run_ids:
        assert_all_lines(client, run_id, 30)


@pytest.mark.slow
def test_redis_restart_no_false_verdict(app, client, processes, redis_server):
    workers = [processes.worker(env=FAST), processes.worker(env=FAST)]
    processes.scheduler(env=FAST)
    runs = [
        launch(client, "sleep_shared.yml", extra_vars={"seconds": 12}, timeout=120)
        for _ in range(2)
    ]
    for run in runs:
        wait_output(client, run["id"], "before the sleep", timeout=60)

    redis_server.restart(down_for=2)
    app.extensions.pop("redis", None)
    wait_all(client, [run["id"] for run in runs], timeout=90)
    later = launch(client, "ping.yml")
    wait_status(client, later["id"], TERMINAL, timeout=60)

    assert false_verdicts(client, [run["id"] for run in runs]) == []
    assert false_verdicts(client, [later["id"]]) == []
    assert all(worker.alive() for worker in workers)
