"""Concurrent writers: worker-like processes and web requests update the same rows.

Four processes append output, heartbeat and end runs while the test cancels
the same runs through the API. Every run must end exactly once, no output
may be lost or stored twice, and nobody may see "database is locked".
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import wait_for
from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import Deployment, OutputChunk, utcnow

WRITER = Path(__file__).resolve().parent / "concurrent_writer.py"
WRITERS = 4
ROUNDS = 60
RUNS = 30


def add_running(count):
    runs = [
        Deployment(
            playbook="ping.yml",
            target="localhost",
            timeout=60,
            status="running",
            extra_vars={},
            started_at=utcnow(),
            heartbeat_at=utcnow(),
        )
        for _ in range(count)
    ]
    db.session.add_all(runs)
    db.session.commit()
    for run in runs:
        run.job_id = f"run-{run.id}-1"
    db.session.commit()
    return [run.id for run in runs]


def test_concurrent_writers_lose_nothing(app, client, shepherd_env):
    with app.app_context():
        output_run, *run_ids = add_running(RUNS + 1)
    env = {**os.environ, **shepherd_env}
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                str(WRITER),
                f"w{n}",
                str(output_run),
                str(run_ids[0]),
                str(run_ids[-1]),
                str(ROUNDS),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]

    def writers_started():
        with app.app_context():
            return (
                db.session.scalar(
                    select(func.count()).where(OutputChunk.deployment_id == output_run)
                )
                >= WRITERS
            )

    wait_for(writers_started, 60, 0.02, message="the writers to start writing")
    canceled = []
    for run_id in reversed(run_ids):
        response = client.post(f"/api/deployments/{run_id}/cancel")
        assert response.status_code in (200, 409), response.get_data(as_text=True)
        if response.status_code == 200:
            canceled.append(run_id)
    results = []
    for writer in writers:
        stdout, stderr = writer.communicate(timeout=240)
        assert writer.returncode == 0, stderr
        assert "database is locked" not in stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    won = [run_id for result in results for run_id in result["won"]] + canceled
    assert sorted(won) == sorted(run_ids)
    with app.app_context():
        rows = db.session.scalars(
            select(Deployment).where(Deployment.id.in_(run_ids))
        ).all()
        assert {row.status for row in rows} <= {"abandoned", "canceled"}
        assert sorted(r.id for r in rows if r.status == "canceled") == sorted(canceled)
        texts = db.session.scalars(
            select(OutputChunk.text).where(OutputChunk.deployment_id == output_run)
        ).all()
        offset = db.session.get(Deployment, output_run).output_offset
        explanations = db.session.scalar(
            select(func.count()).where(
                OutputChunk.deployment_id.in_(run_ids),
                OutputChunk.text.like("%[shepherd]%"),
            )
        )
    expected = {f"w{n}:{r}\n" for n in range(WRITERS) for r in range(ROUNDS)}
    assert len(texts) == WRITERS * ROUNDS
    assert set(texts) == expected
    assert offset == sum(len(text) for text in texts)
    assert explanations == len(run_ids)
