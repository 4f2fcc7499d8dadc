"""Soak measurement: runs condemned by mistake while every core is busy.

``measure_false_verdicts`` starts its own Redis server, SQLite database,
workers and scheduler (the test fixtures' classes, from tests/conftest.py),
keeps a number of healthy runs in flight for a given time while spinning
processes keep every core busy, and counts the runs that ended with anything
but their own success. Every playbook it runs succeeds when nothing
interferes, so that count is the number of false verdicts.

Usage: python bench/soak.py [SECONDS] prints the result as JSON.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import (  # noqa: E402
    PYTHON,
    TEST_PLAYBOOKS,
    Proc,
    RedisServer,
    _kill_marked,
    write_inventory,
)

TERMINAL = {"successful", "failed", "timeout", "canceled", "abandoned"}


def _environment(directory, redis_url, settings):
    playbooks = directory / "playbooks"
    shutil.copytree(ROOT / "playbooks", playbooks)
    for path in TEST_PLAYBOOKS.glob("*.yml"):
        shutil.copy(path, playbooks / path.name)
    # The soak keeps several runs on localhost at once. With host leases
    # they would wait for each other instead of running side by side.
    sleep = playbooks / "sleep.yml"
    sleep.write_text("# leases: none\n" + sleep.read_text())
    return {
        "INSTANCE_DIR": str(directory / "instance"),
        "DATABASE_URL": f"sqlite:///{directory}/shepherd.db",
        "REDIS_URL": redis_url,
        "PLAYBOOK_DIR": str(playbooks),
        "INVENTORY": str(write_inventory(directory / "hosts.yml")),
        "SHEPHERD_HOSTNAME": f"soak-{uuid.uuid4().hex[:8]}",
        "SECRET_KEY": "soak",
        "LOG_LEVEL": "INFO",
        **settings,
    }


def _admin_token(app):
    """Create an admin user in the soak's database and return an API token of it."""
    from webapp import auth

    with app.app_context():
        user = auth.create_user("soak-admin", "admin")
        _, token = auth.create_token(user, label="soak")
    return token


def _burn(seconds):
    code = (
        "import time\n"
        f"end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
    )
    count = (os.cpu_count() or 1) + 1
    return [subprocess.Popen([PYTHON, "-c", code]) for _ in range(count)]


def _launch(client):
    if random.random() < 0.5:
        body = {
            "playbook": "sleep.yml",
            "extra_vars": {"seconds": random.randint(5, 90)},
        }
    else:
        body = {"playbook": "count.yml", "extra_vars": {"count": random.randint(5, 40)}}
    response = client.post(
        "/api/deployments", json={"target": "localhost", "timeout": 600, **body}
    )
    if response.status_code != 201:
        raise RuntimeError(f"launch failed: {response.get_json()}")
    return response.get_json()["id"]


def measure_false_verdicts(duration=600.0, in_flight=8, settings=None):
    """Soak ``in_flight`` healthy runs for ``duration`` s under full CPU load.

    ``settings`` overrides configuration variables (for example
    HEARTBEAT_INTERVAL, HEARTBEAT_GRACE, SWEEP_INTERVAL); the defaults are
    the production ones. Returns a dict with the runs ended, the false
    verdicts (id, status, reason code, evidence) and the largest heartbeat
    age seen while a run was running. Starts and stops all its processes.
    """
    directory = Path(tempfile.mkdtemp(prefix="shepherd-soak-"))
    redis_server = RedisServer(directory / "redis").start()
    env = _environment(directory, redis_server.url, dict(settings or {}))
    saved = dict(os.environ)
    os.environ.update(env)
    procs, burners = [], []
    try:
        from sqlalchemy import select

        from webapp import create_app
        from webapp.extensions import db
        from webapp.models import Deployment, database_time

        app = create_app({"TESTING": True})
        with app.app_context():
            db.create_all()
        child_env = {
            **os.environ,
            "PATH": f"{Path(PYTHON).parent}:{os.environ['PATH']}",
        }
        for number in range(in_flight):
            args = [PYTHON, str(ROOT / "worker.py"), "--name", f"soak-{number}"]
            procs.append(Proc(args, child_env, directory / f"worker-{number}.log"))
        procs.append(
            Proc(
                [PYTHON, str(ROOT / "scheduler.py")], child_env, directory / "sched.log"
            )
        )
        burners = _burn(duration)
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {_admin_token(app)}"

        run_ids, max_age = [], 0.0
        deadline = time.monotonic() + duration
        while True:
            with app.app_context():
                now = database_time()
                rows = db.session.scalars(
                    select(Deployment).where(Deployment.id.in_(run_ids))
                ).all()
                active = 0
                for row in rows:
                    if row.status in ("queued", "running"):
                        active += 1
                    if row.status == "running" and row.heartbeat_at:
                        age = (now - row.heartbeat_at).total_seconds()
                        max_age = max(max_age, age)
                db.session.remove()
            if time.monotonic() >= deadline:
                if active == 0:
                    break
            else:
                for _ in range(in_flight - active):
                    run_ids.append(_launch(client))
            if time.monotonic() > deadline + 900:
                raise RuntimeError(f"runs still active 900 s after the soak: {run_ids}")
            time.sleep(0.5)

        with app.app_context():
            rows = db.session.scalars(
                select(Deployment).where(Deployment.id.in_(run_ids))
            ).all()
            wrong = [
                {
                    "id": row.id,
                    "status": row.status,
                    "reason_code": row.reason_code,
                    "evidence": (row.verdict or {}).get("evidence"),
                }
                for row in rows
                if row.status != "successful" or row.reason
            ]
            db.session.remove()
        return {
            "duration": duration,
            "in_flight": in_flight,
            "runs": len(run_ids),
            "false_verdicts": len(wrong),
            "wrong": wrong,
            "max_heartbeat_age": round(max_age, 3),
        }
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(10)
        for proc in procs:
            proc.stop(signal.SIGKILL)
        _kill_marked({env["SHEPHERD_HOSTNAME"]})
        redis_server.stop()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 600.0
    print(json.dumps(measure_false_verdicts(seconds), indent=2))
