"""History and sweep at scale: a large seeded table, pages timed on gunicorn, sweeps.

Seeded rows go straight into the tables with bulk inserts (no runs are
executed), with output sizes drawn from a fixed distribution: most runs
print about as much as a ping, some as much as a package update, a few a lot.
"""

import cProfile
import io
import pstats
import random
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select, update
from stats import summary

PLAYBOOKS = [
    "ping.yml",
    "facts.yml",
    "update-debian.yml",
    "update-redhat.yml",
    "update-windows.yml",
    "slow.yml",
    "fail.yml",
]
TARGETS = ["localhost", "local", "web", "db", "app-01", "app-02", "all"]
# (status, weight) of finished runs in the seeded history.
STATUSES = [
    ("successful", 85),
    ("failed", 10),
    ("timeout", 2),
    ("canceled", 2),
    ("abandoned", 1),
]
# (share, smallest, largest) output size in bytes.
OUTPUT_SIZES = [(0.90, 600, 2_500), (0.09, 2_500, 20_000), (0.01, 20_000, 100_000)]
CHUNK_CHARS = 4096
BATCH = 5000


def _output_text(rng, size):
    lines = ["\x1b[0;32mPLAY [Seeded] ****************************************\x1b[0m"]
    task = 0
    while sum(len(line) + 1 for line in lines) < size:
        task += 1
        lines.append(f"\nTASK [Step {task}] " + "*" * 50)
        lines.append(f"\x1b[0;32mok: [host-{rng.randint(1, 40):02d}]\x1b[0m")
        lines.append(f'    "msg": "{"seeded output " * rng.randint(1, 6)}"')
    lines.append("\nPLAY RECAP " + "*" * 60)
    return "\n".join(lines)[:size] + "\n"


def _chunks(text):
    pieces = max(2, -(-len(text) // CHUNK_CHARS))
    step = -(-len(text) // pieces)
    return [text[i : i + step] for i in range(0, len(text), step)]


def _text_pool(rng):
    """Return {size class: [output texts]}, built once and reused across rows."""
    pool = {}
    for index, (_, smallest, largest) in enumerate(OUTPUT_SIZES):
        pool[index] = [
            _output_text(rng, rng.randint(smallest, largest)) for _ in range(40)
        ]
    return pool


def seed(app, rows):
    """Insert ``rows`` finished runs with their output; return what was seeded.

    Safe to call more than once: ids continue after the largest one present.
    """
    from webapp.extensions import db
    from webapp.models import Deployment, OutputChunk

    rng = random.Random(20261204)
    pool = _text_pool(rng)
    statuses, weights = zip(*STATUSES, strict=True)
    shares = [share for share, _, _ in OUTPUT_SIZES]
    started = time.perf_counter()
    with app.app_context():
        first_id = (db.session.scalar(select(func.max(Deployment.id))) or 0) + 1
        db.session.remove()
        now = datetime.now(UTC) - timedelta(days=1)
        spacing = timedelta(days=365) / rows
        typical = {}
        chunk_count = 0
        for batch_start in range(0, rows, BATCH):
            runs, chunks = [], []
            for offset in range(batch_start, min(rows, batch_start + BATCH)):
                run_id = first_id + offset
                size_class = rng.choices(range(len(shares)), shares)[0]
                text = rng.choice(pool[size_class])
                typical.setdefault(size_class, (run_id, len(text)))
                runs.append(_seed_row(rng, run_id, now - spacing * (rows - offset)))
                status = rng.choices(statuses, weights)[0]
                runs[-1]["status"] = status
                if status != "successful":
                    runs[-1]["rc"] = 2
                    runs[-1]["reason"] = f"seeded run ended {status}"
                    runs[-1]["reason_code"] = status
                runs[-1]["output_offset"] = len(text)
                for piece in _chunks(text):
                    chunks.append({"deployment_id": run_id, "text": piece})
            with db.engine.begin() as connection:
                connection.execute(insert(Deployment.__table__), runs)
                connection.execute(insert(OutputChunk.__table__), chunks)
            chunk_count += len(chunks)
        db.session.remove()
    return {
        "rows": rows,
        "first_id": first_id,
        "last_id": first_id + rows - 1,
        "output_chunks": chunk_count,
        "typical_run": typical[0][0],
        "typical_run_output_bytes": typical[0][1],
        "seconds": round(time.perf_counter() - started, 1),
    }


def _seed_row(rng, run_id, queued_at):
    started_at = queued_at + timedelta(seconds=rng.uniform(0.02, 2))
    finished_at = started_at + timedelta(seconds=rng.uniform(1, 900))
    return {
        "id": run_id,
        "playbook": rng.choice(PLAYBOOKS),
        "target": rng.choice(TARGETS),
        "extra_vars": {},
        "check_mode": rng.random() < 0.1,
        "timeout": 600,
        "trigger": "manual" if rng.random() < 0.7 else "schedule:nightly",
        "launched_by": f"operator-{rng.randint(1, 12)}",
        "attempt": 1,
        "requeue_count": 0,
        "job_id": f"run-{run_id}-1",
        "queued_at": queued_at,
        "started_at": started_at,
        "finished_at": finished_at,
        "heartbeat_at": finished_at,
        "last_output_at": finished_at,
        "worker_name": f"worker-{rng.randint(1, 4)}",
        "hostname": "seeded-host",
        "rc": 0,
        "reason": None,
        "reason_code": None,
        "stats": {"localhost": {"ok": 1, "changed": 0, "failures": 0, "dark": 0}},
    }


def history_pages(seeded):
    """Return {name: path} of the pages timed over the seeded history."""
    deep = seeded["first_id"] + seeded["rows"] // 10
    return {
        "history_first_page": "/runs",
        "history_deep_page": f"/runs?before={deep}",
        "history_filtered_page": "/runs?status=failed&playbook=update-debian.yml",
        "run_page": f"/runs/{seeded['typical_run']}",
        "dashboard": "/",
        "api_list": "/api/deployments?limit=50",
    }


def time_pages(stack, pages, repeats, warmup=3):
    """Request every page ``repeats`` times in turn; return {name: ms summary}."""
    session = stack.session
    samples = {name: [] for name in pages}
    for round_index in range(warmup + repeats):
        for name, path in pages.items():
            started = time.perf_counter()
            response = session.get(stack.url + path, timeout=60)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"GET {path} returned {response.status_code}")
            if round_index >= warmup:
                samples[name].append(elapsed)
    return {
        name: {"path": pages[name], "ms": summary(values, 2)}
        for name, values in samples.items()
    }


# The sweep, called in this process on the same database and Redis.


def _sweep_once(app, profile=None):
    from jobs.sweep import sweep
    from webapp.extensions import db
    from webapp.launch import queue, redis_connection

    with app.app_context():
        connection = redis_connection()
        work_queue = queue()
        started = time.perf_counter()
        if profile:
            profile.enable()
        counts = sweep(connection, work_queue)
        if profile:
            profile.disable()
        elapsed = (time.perf_counter() - started) * 1000
        db.session.remove()
    return elapsed, counts


def make_stale(app, seeded, count, rng):
    """Turn ``count`` seeded runs into running runs whose worker went silent an hour ago."""
    from webapp.extensions import db
    from webapp.models import Deployment

    ids = rng.sample(range(seeded["first_id"], seeded["last_id"] + 1), count)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with app.app_context():
        with db.engine.begin() as connection:
            connection.execute(
                update(Deployment.__table__)
                .where(Deployment.id.in_(ids))
                .values(
                    status="running",
                    reason=None,
                    verdict=None,
                    finished_at=None,
                    started_at=an_hour_ago,
                    heartbeat_at=an_hour_ago,
                    hostname="bench-gone-host",
                    worker_name="bench-gone-worker",
                    job_id=None,
                    horse_pid=None,
                )
            )
        db.session.remove()
    return ids


def sweep_idle(app, repeats):
    """Time sweeps that find nothing to do; return the ms summary."""
    times = [_sweep_once(app)[0] for _ in range(repeats)]
    return summary(times, 2)


def sweep_stale(app, seeded, stale, repeats):
    """Time sweeps that each find ``stale`` silent runs, then profile one more."""
    rng = random.Random(7)
    times, ended = [], []
    for _ in range(repeats):
        make_stale(app, seeded, stale, rng)
        elapsed, counts = _sweep_once(app)
        if counts["stale_heartbeat"] != stale:
            raise RuntimeError(
                f"the sweep ended {counts['stale_heartbeat']} of {stale} stale runs"
            )
        times.append(elapsed)
        ended.append(counts["stale_heartbeat"])
    make_stale(app, seeded, stale, rng)
    profile = cProfile.Profile()
    profiled_ms, counts = _sweep_once(app, profile)
    return {
        "stale": stale,
        "ms": summary(times, 2),
        "ended": ended,
        "ms_per_stale_run": round(summary(times)["p50"] / stale, 3),
        "profiled_ms": round(profiled_ms, 1),
        "profile": _profile_lines(profile),
    }


def _profile_lines(profile, limit=14):
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(limit)
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    start = next(
        (i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0
    )
    return [line for line in lines[start:] if line.strip()]
