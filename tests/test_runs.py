"""The run page and its event stream, the output download and ANSI rendering."""

import json
import re

from sqlalchemy import insert

from webapp import ansi, runs
from webapp.extensions import db
from webapp.models import Deployment, OutputChunk, utcnow


def add_run(app, chunks=(), **fields):
    values = {
        "playbook": "ping.yml",
        "target": "localhost",
        "timeout": 60,
        "status": "successful",
        **fields,
    }
    with app.app_context():
        run = Deployment(**values)
        db.session.add(run)
        db.session.commit()
        if chunks:
            db.session.execute(
                insert(OutputChunk),
                [{"deployment_id": run.id, "text": text} for text in chunks],
            )
            db.session.commit()
        return run.id


def parse_events(body):
    """Return [(event, id, data)] from a text/event-stream body."""
    events = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line
        )
        if "event" in fields:
            events.append((fields["event"], fields.get("id"), fields.get("data")))
    return events


def test_event_stream_of_ended_run_ends(app, client):
    now = utcnow()
    run_id = add_run(
        app,
        ["\x1b[0;32mok: [localhost]\x1b[0m\n", "<b>PLAY RECAP</b>\n"],
        started_at=now,
        finished_at=now,
    )

    response = client.get(f"/runs/{run_id}/events")
    events = parse_events(response.get_data(as_text=True))

    assert response.mimetype == "text/event-stream"
    assert [e[0] for e in events] == ["output", "output", "status", "end"]
    assert [e[1] for e in events[:2]] == ["1", "2"]
    first = json.loads(events[0][2])["html"]
    assert first == '<span class="ansi-fg-green">ok: [localhost]</span>\n'
    assert "&lt;b&gt;PLAY RECAP&lt;/b&gt;" in json.loads(events[1][2])["html"]
    status = json.loads(events[2][2])
    assert status["status"] == "successful"
    assert 'data-status="successful"' in status["badge"]


def test_event_stream_resumes_after_last_event_id(app, client):
    run_id = add_run(app, ["one\n", "two\n", "three\n"])

    response = client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "2"})
    events = parse_events(response.get_data(as_text=True))

    outputs = [
        json.loads(data)["html"] for event, _, data in events if event == "output"
    ]
    assert outputs == ["three\n"]


def test_event_stream_rejects_bad_last_event_id(app, client):
    run_id = add_run(app)

    response = client.get(f"/runs/{run_id}/events?after=abc")

    assert response.status_code == 400


def test_huge_output_shows_tail_with_download(app, client):
    # 50 chunks of 1 MiB, as the worker stores a 50 MB output.
    line = "x" * 99 + "\n"
    chunk = line * (1024 * 1024 // 100)
    chunks = [f"chunk {i} start\n" + chunk for i in range(50)]
    run_id = add_run(app, chunks)

    page = client.get(f"/runs/{run_id}")
    body = page.get_data(as_text=True)
    download = client.get(f"/runs/{run_id}/output.txt")

    assert page.status_code == 200
    assert len(body) < 2 * runs.INLINE_OUTPUT_CHARS
    assert 'id="output-truncated"' in body
    assert f'href="/runs/{run_id}/output.txt"' in body
    assert "chunk 0 start" not in body
    output = re.search(r'<pre class="ansible-output"[^>]*>(.*?)</pre>', body, re.S)
    assert output.group(1).startswith("x" * 99)
    assert output.group(1).endswith(line)
    assert download.headers["Content-Disposition"] == (
        f'attachment; filename="run-{run_id}.txt"'
    )
    assert len(download.get_data(as_text=True)) == sum(len(c) for c in chunks)


def test_short_output_shown_whole(app, client):
    run_id = add_run(app, ["PLAY [Ping]\n", "PLAY RECAP\n"])

    body = client.get(f"/runs/{run_id}").get_data(as_text=True)

    assert "PLAY [Ping]\nPLAY RECAP\n" in body
    assert 'id="output-truncated"' not in body


def test_history_partial_is_the_table_alone(app, client):
    add_run(app, status="running", started_at=utcnow(), heartbeat_at=utcnow())

    body = client.get("/runs?partial=rows").get_data(as_text=True)

    assert body.lstrip().startswith('<div id="history-table" data-refresh="3"')
    assert '<nav class="navbar' not in body


def test_ansi_escapes_text_and_drops_other_sequences():
    html = str(ansi.to_html("\x1b[1;31m<script>\x1b[0m\x1b[2K&\r\n"))

    assert html == '<span class="ansi-bold ansi-fg-red">&lt;script&gt;</span>&amp;\r\n'


def test_ansi_extended_colours_not_read_as_basic():
    assert str(ansi.to_html("\x1b[38;5;31mA\x1b[0m")) == "A"
    assert str(ansi.to_html("\x1b[38;2;32;33;34;1mB\x1b[0m")) == (
        '<span class="ansi-bold">B</span>'
    )


def test_history_shows_queue_position_and_worker(app, client, redis_client):
    from jobs import queueing
    from webapp.launch import queue

    now = utcnow()
    first = add_run(app, status="queued", job_id="run-1-1")
    second = add_run(app, status="queued", job_id="run-2-1")
    add_run(
        app,
        status="running",
        job_id="run-3-1",
        started_at=now,
        heartbeat_at=now,
        worker_name="w-ui",
        hostname="host-ui",
    )
    with app.app_context():
        queueing.enqueue_run(queue(), first, 1, 60)
        queueing.enqueue_run(queue(), second, 1, 60)

    body = client.get("/runs").get_data(as_text=True)
    rows = {
        match.group(1): match.group(0)
        for match in re.finditer(r'<tr data-run="(\d+)".*?</tr>', body, re.S)
    }

    assert "position 1 in queue" in rows[str(first)]
    assert "position 2 in queue" in rows[str(second)]
    assert "w-ui" in rows["3"]
    assert "host-ui" in rows["3"]
    assert "heartbeat" in rows["3"]
    assert "RQ disagrees" in rows["3"]
