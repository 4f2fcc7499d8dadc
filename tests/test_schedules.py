"""Schedules: occurrence times across daylight saving, firing once, and the API and pages.

Process tests run a real scheduler (and worker where a run must finish) on
the test Redis. They use a sixth cron field with seconds (SCHEDULE_SECONDS)
so that occurrences come due within seconds.
"""

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import wait_for, wait_status

from jobs import schedules as firing
from webapp import cron
from webapp.extensions import db
from webapp.models import Deployment, Schedule, ScheduleOccurrence, utcnow

BERLIN = cron.parse_zone("Europe/Berlin")
NEW_YORK = cron.parse_zone("America/New_York")


@pytest.fixture(autouse=True)
def fast_schedules(monkeypatch):
    monkeypatch.setenv("SCHEDULE_SECONDS", "1")


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def times(expression, zone, after, count):
    return cron.next_times(cron.normalize(expression), zone, after, count)


# Occurrence computation


def test_spring_gap_runs_once_at_gap_end():
    # Europe/Berlin skips 02:00-03:00 local on 2026-03-29.
    result = times("30 2 * * *", BERLIN, utc(2026, 3, 27, 12), 4)

    assert result == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 30),
        utc(2026, 3, 31, 0, 30),
    ]
    assert result[1].astimezone(BERLIN).strftime("%H:%M %Z") == "03:00 CEST"


def test_spring_gap_collapses_several_times():
    result = times("*/15 2 * * *", BERLIN, utc(2026, 3, 28, 12), 2)

    assert result[0] == utc(2026, 3, 29, 1, 0)
    assert result[1] == utc(2026, 3, 30, 0, 0)


def test_spring_gap_new_york():
    # America/New_York skips 02:00-03:00 local on 2026-03-08.
    result = times("30 2 * * *", NEW_YORK, utc(2026, 3, 7), 3)

    assert result == [
        utc(2026, 3, 7, 7, 30),
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 9, 6, 30),
    ]


def test_autumn_repeat_runs_fixed_time_once():
    # Europe/Berlin shows 02:00-03:00 local twice on 2026-10-25.
    result = times("30 2 * * *", BERLIN, utc(2026, 10, 24, 12), 3)

    assert result == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
        utc(2026, 10, 27, 1, 30),
    ]


def test_autumn_repeat_once_when_after_first_instance():
    # Asked between the two instances of 02:30, the second is not offered.
    result = times("30 2 * * *", BERLIN, utc(2026, 10, 25, 0, 45), 1)

    assert result == [utc(2026, 10, 26, 1, 30)]


def test_autumn_repeat_runs_hourly_expression_in_both_hours():
    result = times("0 * * * *", BERLIN, utc(2026, 10, 24, 23, 30), 4)

    assert result == [
        utc(2026, 10, 25, 0, 0),
        utc(2026, 10, 25, 1, 0),
        utc(2026, 10, 25, 2, 0),
        utc(2026, 10, 25, 3, 0),
    ]
    local = [t.astimezone(BERLIN).strftime("%H:%M %Z") for t in result]
    assert local == ["02:00 CEST", "02:00 CET", "03:00 CET", "04:00 CET"]


def test_occurrences_strictly_increase_over_a_year():
    result = times("*/30 1-3 * * *", BERLIN, utc(2026, 1, 1), 6 * 365)

    assert all(a < b for a, b in zip(result, result[1:], strict=False))


def test_due_between_keeps_latest_and_counts_all():
    expression = cron.normalize("*/10 * * * *")

    latest, total = cron.due_between(
        expression, cron.parse_zone("UTC"), utc(2026, 1, 1), utc(2026, 1, 1, 2), 3
    )

    assert total == 12
    assert latest == [
        utc(2026, 1, 1, 1, 40),
        utc(2026, 1, 1, 1, 50),
        utc(2026, 1, 1, 2),
    ]


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("", "required"),
        ("* * * *", "expected 5 fields"),
        ("61 * * * *", "'61 * * * *'"),
        ("0 0 31 2 *", "never matches"),
        ("0 0 * * * * 2026", "got 7"),
        ("* * * * * */5", "got 6"),
    ],
)
def test_normalize_rejects(expression, fragment):
    with pytest.raises(cron.CronError) as caught:
        cron.normalize(expression)

    assert fragment in str(caught.value)


def test_normalize_accepts_alias_and_seconds():
    assert cron.normalize("@daily") == "0 0 * * *"
    assert cron.normalize("0  3 * *  0") == "0 3 * * 0"
    assert cron.normalize("* * * * * */5", allow_seconds=True) == "* * * * * */5"


# Firing, called directly (no scheduler process)


def add_schedule(app, **fields):
    values = {
        "name": "test",
        "playbook": "ping.yml",
        "target": "localhost",
        "extra_vars": {},
        "cron": "* * * * *",
        "timezone": "UTC",
        "overlap": "skip",
        "paused": False,
        "missed_grace": 3600,
        "version": 1,
        "active_since": utcnow(),
        "created_at": utcnow(),
        "updated_at": utcnow(),
        **fields,
    }
    with app.app_context():
        schedule = Schedule(**values)
        db.session.add(schedule)
        db.session.commit()
        return schedule.id


def occurrences(app, schedule_id):
    with app.app_context():
        return [
            (o.occurs_at, o.outcome, o.reason, o.deployment_id)
            for o in db.session.scalars(
                db.select(ScheduleOccurrence)
                .where(ScheduleOccurrence.schedule_id == schedule_id)
                .order_by(ScheduleOccurrence.occurs_at)
            )
        ]


def runs_of(app, schedule_id):
    with app.app_context():
        return db.session.scalars(
            db.select(Deployment)
            .where(Deployment.trigger == f"schedule:{schedule_id}")
            .order_by(Deployment.id)
        ).all()


def fire(app, schedule_id, now):
    with app.app_context():
        rows = firing.fire_due(schedule_id, now)
        return [(r.occurs_at, r.outcome) for r in rows]


def test_fire_due_missed_runs_latest_once(app):
    now = utc(2026, 6, 1, 12, 0, 30)
    schedule_id = add_schedule(
        app, cron="*/10 * * * *", active_since=now - timedelta(hours=1)
    )

    rows = fire(app, schedule_id, now)

    assert rows[-1] == (utc(2026, 6, 1, 12, 0), "started")
    assert [outcome for _, outcome in rows[:-1]] == ["missed"] * 5
    runs = runs_of(app, schedule_id)
    assert len(runs) == 1
    assert runs[0].status == "queued"
    assert occurrences(app, schedule_id)[-1][3] == runs[0].id


def test_fire_due_summarizes_long_downtime(app):
    now = utc(2026, 6, 1, 12, 0, 30)
    schedule_id = add_schedule(
        app, cron="* * * * *", active_since=now - timedelta(hours=3)
    )

    rows = fire(app, schedule_id, now)

    assert len(rows) == firing.MAX_MISSED_ROWS + 1
    assert rows[-1] == (utc(2026, 6, 1, 12), "started")
    oldest = occurrences(app, schedule_id)[0]
    assert oldest[0] == utc(2026, 6, 1, 11, 10)
    assert "129 earlier occurrence(s)" in oldest[2]
    assert len(runs_of(app, schedule_id)) == 1


def test_fire_schedule_job_on_worker(app, redis_client):
    # A trigger job that reaches a worker fires like the scheduler would.
    schedule_id = add_schedule(
        app, cron="* * * * *", active_since=utcnow() - timedelta(minutes=2)
    )

    with app.app_context():
        firing.fire_schedule(schedule_id)
        firing.fire_schedule(schedule_id)

    outcomes = [row[1] for row in occurrences(app, schedule_id)]
    assert outcomes[-1] == "started"
    assert len(runs_of(app, schedule_id)) == 1
    score = redis_client.zscore(
        "rq:scheduler:scheduled_jobs", firing.job_id(schedule_id)
    )
    assert score > utcnow().timestamp()


def test_fire_due_beyond_grace_records_all_missed(app):
    now = utc(2026, 6, 1, 12, 20)
    schedule_id = add_schedule(
        app,
        cron="0 * * * *",
        missed_grace=600,
        active_since=now - timedelta(hours=3),
    )

    rows = fire(app, schedule_id, now)

    assert [outcome for _, outcome in rows] == ["missed"] * 3
    assert "grace of 600 s" in occurrences(app, schedule_id)[-1][2]
    assert runs_of(app, schedule_id) == []


def test_fire_due_twice_fires_once(app):
    now = utc(2026, 6, 1, 12, 0, 5)
    schedule_id = add_schedule(
        app, cron="0 12 * * *", active_since=now - timedelta(minutes=5)
    )

    first = fire(app, schedule_id, now)
    second = fire(app, schedule_id, now + timedelta(seconds=1))

    assert first == [(utc(2026, 6, 1, 12), "started")]
    assert second == []
    assert len(runs_of(app, schedule_id)) == 1


def test_fire_due_concurrent_claim_loses(app, monkeypatch):
    # Another process records the occurrence between our read and our write.
    now = utc(2026, 6, 1, 12, 0, 5)
    schedule_id = add_schedule(
        app, cron="0 12 * * *", active_since=now - timedelta(minutes=5)
    )
    with app.app_context():
        db.session.add(
            ScheduleOccurrence(
                schedule_id=schedule_id,
                occurs_at=utc(2026, 6, 1, 12),
                outcome="started",
                recorded_at=now,
            )
        )
        db.session.commit()
    monkeypatch.setattr(
        firing, "reference_time", lambda schedule, last=None: schedule.active_since
    )

    rows = fire(app, schedule_id, now)

    assert rows == []
    assert runs_of(app, schedule_id) == []


def test_fire_due_overlap_skip_records_reason(app, client):
    now = utcnow()
    schedule_id = add_schedule(
        app, cron="* * * * * *", active_since=now - timedelta(seconds=2)
    )
    first = fire(app, schedule_id, now - timedelta(seconds=1))
    assert first[-1][1] == "started"
    previous = runs_of(app, schedule_id)[0]

    second = fire(app, schedule_id, now)

    assert second == [(now.replace(microsecond=0), "skipped")]
    reason = occurrences(app, schedule_id)[-1][2]
    assert f"previous run {previous.id}" in reason
    assert "still queued" in reason
    assert len(runs_of(app, schedule_id)) == 1


def test_fire_due_overlap_allow_runs_both(app):
    now = utcnow()
    schedule_id = add_schedule(
        app,
        cron="* * * * * *",
        overlap="allow",
        active_since=now - timedelta(seconds=2),
    )

    fire(app, schedule_id, now - timedelta(seconds=1))
    second = fire(app, schedule_id, now)

    assert second == [(now.replace(microsecond=0), "started")]
    assert len(runs_of(app, schedule_id)) == 2


def test_fire_due_unknown_playbook_recorded_failed(app):
    now = utc(2026, 6, 1, 12, 0, 5)
    schedule_id = add_schedule(
        app,
        cron="0 12 * * *",
        playbook="gone.yml",
        active_since=now - timedelta(minutes=5),
    )

    rows = fire(app, schedule_id, now)

    assert rows == [(utc(2026, 6, 1, 12), "failed")]
    assert "'gone.yml'" in occurrences(app, schedule_id)[0][2]
    assert runs_of(app, schedule_id) == []


# The JSON API

VALID = {
    "name": "Nightly ping",
    "playbook": "ping.yml",
    "target": "localhost",
    "cron": "0 3 * * 0",
    "timezone": "Europe/Berlin",
}


def count_schedules(app):
    with app.app_context():
        return db.session.query(Schedule).count()


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"cron": "not a cron"}, "cron", "'not a cron'"),
        ({"cron": "61 * * * *"}, "cron", "'61 * * * *'"),
        ({"cron": "* * * *"}, "cron", "expected 5 fields"),
        ({"cron": None}, "cron", "required"),
        ({"cron": ["* * * * *"]}, "cron", "['* * * * *']"),
        ({"timezone": 5}, "timezone", "Invalid time zone 5"),
        ({"timezone": "Mars/Olympus"}, "timezone", "'Mars/Olympus'"),
        ({"timezone": "../../etc/passwd"}, "timezone", "'../../etc/passwd'"),
        ({"playbook": "nope.yml"}, "playbook", "'nope.yml'"),
        ({"target": "nohost"}, "target", "'nohost'"),
        ({"target": "--all"}, "target", "'--all'"),
        ({"extra_vars": "a: [1"}, "extra_vars", "not valid YAML"),
        ({"extra_vars": "[1, 2]"}, "extra_vars", "expected a mapping"),
        ({"timeout": "soon"}, "timeout", "'soon'"),
        ({"overlap": "queue"}, "overlap", "'queue'"),
        ({"missed_grace": 5}, "missed_grace", "at least 60"),
        ({"missed_grace": "1h"}, "missed_grace", "'1h'"),
        ({"paused": "maybe"}, "paused", "'maybe'"),
        ({"name": ""}, "name", "name is required"),
        ({"colour": "blue"}, "colour", "'colour'"),
    ],
)
def test_api_create_rejects_bad_input(app, client, changes, field, fragment):
    response = client.post("/api/schedules", json={**VALID, **changes})

    assert response.status_code == 400
    payload = response.get_json()
    assert payload["field"] == field
    assert fragment in payload["error"]
    assert count_schedules(app) == 0


def test_api_create_rejects_non_object(app, client):
    response = client.post("/api/schedules", data="[]", content_type="application/json")

    assert response.status_code == 400
    assert "JSON object" in response.get_json()["error"]
    assert count_schedules(app) == 0


def test_api_seconds_field_rejected_without_setting(app, client):
    app.config["SCHEDULE_SECONDS"] = False

    response = client.post("/api/schedules", json={**VALID, "cron": "* * * * * */5"})

    assert response.status_code == 400
    assert "got 6" in response.get_json()["error"]


def test_api_create_shows_next_five_in_zone(client):
    response = client.post("/api/schedules", json=VALID)

    assert response.status_code == 201
    created = response.get_json()
    assert created["timezone"] == "Europe/Berlin"
    assert created["overlap"] == "skip"
    assert created["missed_grace"] == 3600
    assert created["paused"] is False
    runs = created["next_runs"]
    assert len(runs) == 5
    for entry in runs:
        local = datetime.fromisoformat(entry["local"])
        assert (local.weekday(), local.hour, local.minute) == (6, 3, 0)
        assert datetime.fromisoformat(entry["utc"]) == local


def test_api_registers_with_rq_scheduler(app, client, redis_client):
    created = client.post("/api/schedules", json=VALID).get_json()
    key = firing.job_id(created["id"])

    score = redis_client.zscore("rq:scheduler:scheduled_jobs", key)
    assert score == datetime.fromisoformat(created["next_runs"][0]["utc"]).timestamp()

    client.patch(f"/api/schedules/{created['id']}", json={"paused": True})
    assert redis_client.zscore("rq:scheduler:scheduled_jobs", key) is None

    client.patch(f"/api/schedules/{created['id']}", json={"paused": False})
    assert redis_client.zscore("rq:scheduler:scheduled_jobs", key) == score

    client.delete(f"/api/schedules/{created['id']}")
    assert redis_client.zscore("rq:scheduler:scheduled_jobs", key) is None
    assert not redis_client.exists(f"rq:job:{key}")


def test_api_read_update_delete(app, client):
    created = client.post("/api/schedules", json=VALID).get_json()
    url = f"/api/schedules/{created['id']}"

    listed = client.get("/api/schedules").get_json()["schedules"]
    assert [s["id"] for s in listed] == [created["id"]]

    paused = client.patch(url, json={"paused": True}).get_json()
    assert paused["paused"] is True
    assert paused["next_runs"] == []

    bad = client.patch(url, json={"cron": "nope"})
    assert bad.status_code == 400
    assert client.get(url).get_json()["cron"] == "0 3 * * 0"

    changed = client.patch(url, json={"cron": "@daily", "paused": False}).get_json()
    assert changed["cron"] == "0 0 * * *"
    assert changed["version"] == created["version"] + 2

    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404
    assert client.delete(url).status_code == 404
    assert count_schedules(app) == 0


# Pages


def test_pages_create_pause_and_show_next_runs(app, client):
    form = {**VALID, "extra_vars": "version: 2", "overlap": "allow"}

    created = client.post("/schedules/new", data=form)
    assert created.status_code == 302
    detail_url = created.headers["Location"]

    page = client.get(detail_url).get_data(as_text=True)
    assert "Nightly ping" in page
    assert page.count("03:00:00 CE") == 5
    assert "Nothing has come due yet" in page

    listing = client.get("/schedules").get_data(as_text=True)
    assert "Nightly ping" in listing
    assert 'href="/schedules"' in listing

    schedule_id = int(detail_url.rstrip("/").split("/")[-1])
    client.post(f"/schedules/{schedule_id}/pause")
    assert "None while the schedule is paused" in client.get(detail_url).get_data(
        as_text=True
    )
    client.post(f"/schedules/{schedule_id}/resume")
    with app.app_context():
        schedule = db.session.get(Schedule, schedule_id)
        assert schedule.paused is False
        assert schedule.extra_vars == {"version": 2}

    edit = client.get(f"/schedules/{schedule_id}/edit").get_data(as_text=True)
    assert "version: 2" in edit


def test_page_form_rejects_bad_cron(app, client):
    response = client.post("/schedules/new", data={**VALID, "cron": "every day"})

    assert response.status_code == 400
    assert "every day" in response.get_data(as_text=True)
    assert count_schedules(app) == 0


# With real scheduler and worker processes


def cron_at(moment):
    """Return a seconds-field cron expression matching only ``moment`` (UTC)."""
    return (
        f"{moment.minute} {moment.hour} {moment.day} {moment.month} * {moment.second}"
    )


def create(client, **fields):
    response = client.post(
        "/api/schedules", json={**VALID, "timezone": "UTC", **fields}
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def history(client, schedule_id):
    """Return the schedule's occurrences, once each started one names its run."""
    deadline = time.monotonic() + 10
    while True:
        rows = client.get(f"/api/schedules/{schedule_id}").get_json()["history"]
        unlinked = [
            r for r in rows if r["outcome"] == "started" and not r["deployment_id"]
        ]
        if not unlinked or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_schedule_due_soon_fires_once_and_succeeds(app, client, processes):
    processes.worker()
    processes.scheduler()
    due = (utcnow() + timedelta(seconds=5)).replace(microsecond=0)

    schedule = create(client, cron=cron_at(due))

    rows = wait_for(lambda: history(client, schedule["id"]), 30, 0.2, "occurrence")
    assert rows[0]["outcome"] == "started"
    assert rows[0]["occurs_at"] == due.isoformat()
    run = wait_status(client, rows[0]["deployment_id"], {"successful", "failed"})
    assert run["status"] == "successful"
    assert run["trigger"] == f"schedule:{schedule['id']}"
    assert datetime.fromisoformat(run["queued_at"]) >= due
    time.sleep(2)
    assert len(history(client, schedule["id"])) == 1
    assert len(runs_of(app, schedule["id"])) == 1
    listed = client.get("/api/deployments?trigger=schedule").get_json()
    assert [d["id"] for d in listed["deployments"]] == [run["id"]]
    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert f'href="/schedules/{schedule["id"]}"' in page


def test_two_schedulers_fire_each_occurrence_once(app, client, processes):
    processes.worker()
    first = processes.scheduler()
    second = processes.scheduler()

    schedule = create(client, cron="* * * * * */3", overlap="allow")
    wait_for(
        lambda: len(runs_of(app, schedule["id"])) >= 4, 60, 0.2, "four scheduled runs"
    )
    client.patch(f"/api/schedules/{schedule['id']}", json={"paused": True})
    time.sleep(1.5)

    rows = history(client, schedule["id"])
    due_times = sorted(datetime.fromisoformat(r["occurs_at"]) for r in rows)
    assert all(t.second % 3 == 0 for t in due_times)
    assert len(set(due_times)) == len(rows)
    started = [r for r in rows if r["outcome"] == "started"]
    runs = runs_of(app, schedule["id"])
    assert sorted(r.id for r in runs) == sorted(r["deployment_id"] for r in started)
    fired = [
        proc.output().count(f"started by schedule {schedule['id']} ")
        for proc in (first, second)
    ]
    assert sum(fired) == len(started)


def test_redis_flush_then_fires_on_time(app, client, processes, redis_client):
    processes.worker()
    processes.scheduler()
    # With "allow", a run whose job the flush removed (the sweep re-queues it
    # later) does not make the next occurrences skip.
    schedule = create(client, cron="* * * * * */4", overlap="allow")
    wait_for(lambda: history(client, schedule["id"]), 30, 0.2, "first occurrence")
    first = history(client, schedule["id"])[0]
    wait_status(client, first["deployment_id"], {"successful", "failed"})

    redis_client.flushall()
    flushed_at = utcnow()

    def fired_after_flush():
        return [
            r
            for r in history(client, schedule["id"])
            if datetime.fromisoformat(r["occurs_at"]) > flushed_at
        ]

    later = wait_for(fired_after_flush, 30, 0.2, "an occurrence after the flush")
    assert later[-1]["outcome"] == "started"
    late = datetime.fromisoformat(later[-1]["recorded_at"]) - datetime.fromisoformat(
        later[-1]["occurs_at"]
    )
    assert late < timedelta(seconds=10)
    run = wait_status(client, later[-1]["deployment_id"], {"successful", "failed"})
    assert run["status"] == "successful"
    assert redis_client.zscore(
        "rq:scheduler:scheduled_jobs", firing.job_id(schedule["id"])
    )


def test_overlap_skip_records_skipped(app, client, processes):
    processes.worker()
    processes.scheduler()
    schedule = create(
        client,
        playbook="sleep.yml",
        extra_vars={"seconds": 8},
        cron="* * * * * */2",
    )

    rows = wait_for(
        lambda: [
            r for r in history(client, schedule["id"]) if r["outcome"] == "skipped"
        ]
        and history(client, schedule["id"]),
        30,
        0.2,
        "a skipped occurrence",
    )
    client.patch(f"/api/schedules/{schedule['id']}", json={"paused": True})

    started = [r for r in rows if r["outcome"] == "started"]
    skipped = [r for r in rows if r["outcome"] == "skipped"]
    assert len(started) == 1
    assert f"previous run {started[0]['deployment_id']}" in skipped[0]["reason"]
    assert len(runs_of(app, schedule["id"])) == 1


def test_overlap_allow_runs_both(app, client, processes):
    processes.worker()
    processes.worker()
    processes.scheduler()
    schedule = create(
        client,
        playbook="sleep_shared.yml",
        extra_vars={"seconds": 3},
        cron="* * * * * */2",
        overlap="allow",
    )

    wait_for(lambda: len(runs_of(app, schedule["id"])) >= 2, 30, 0.2, "two runs")
    client.patch(f"/api/schedules/{schedule['id']}", json={"paused": True})

    rows = history(client, schedule["id"])
    assert "skipped" not in {r["outcome"] for r in rows}
    first, second = runs_of(app, schedule["id"])[:2]
    first = wait_status(client, first.id, {"successful", "failed"})
    second = wait_status(client, second.id, {"successful", "failed"})
    assert first["status"] == "successful"
    assert second["status"] == "successful"
    assert second["started_at"] < first["finished_at"]


def test_missed_while_down_runs_latest_once(app, client, processes, redis_client):
    # Hourly at a minute that passed ten minutes ago; the scheduler was down
    # for the last three hours.
    now = utcnow()
    minute = (now - timedelta(minutes=10)).minute
    within = create(client, name="within grace", cron=f"{minute} * * * *")
    beyond = create(
        client, name="beyond grace", cron=f"{minute} * * * *", missed_grace=300
    )
    with app.app_context():
        for schedule_id in (within["id"], beyond["id"]):
            db.session.get(Schedule, schedule_id).active_since = now - timedelta(
                hours=3
            )
        db.session.commit()

    processes.scheduler()

    within_rows = wait_for(lambda: history(client, within["id"]), 30, 0.2, "catch-up")
    beyond_rows = wait_for(lambda: history(client, beyond["id"]), 30, 0.2, "misses")
    time.sleep(2)
    within_rows = history(client, within["id"])
    assert [r["outcome"] for r in within_rows] == ["started", "missed", "missed"]
    assert len(runs_of(app, within["id"])) == 1
    assert [r["outcome"] for r in beyond_rows] == ["missed"] * 3
    assert "grace of 300 s" in beyond_rows[0]["reason"]
    assert runs_of(app, beyond["id"]) == []

    # With no worker the run waits in the normal queue, which rq info lists.
    info = subprocess.run(
        [
            str(Path(sys.executable).parent / "rq"),
            "info",
            "--url",
            app.config["REDIS_URL"],
            "--only-queues",
            "--raw",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert f"queue {app.config['QUEUE_NAME']} 1" in info.stdout, info.stdout
