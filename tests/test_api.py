"""The JSON API with a real worker: launching, listing, reading and bad input."""

import pytest
from conftest import get_run, launch, wait_output, wait_status

from webapp.extensions import db
from webapp.models import Deployment


def count_runs(app):
    with app.app_context():
        return db.session.query(Deployment).count()


def test_ping_succeeds_with_output_and_stats(client, processes):
    processes.worker()

    run = launch(client, "ping.yml", "localhost")
    assert run["status"] == "queued"
    assert run["job_id"]

    done = wait_status(client, run["id"], {"successful", "failed"})
    assert done["status"] == "successful"
    assert done["reason"] is None
    assert done["rc"] == 0
    assert done["stats"]["localhost"]["ok"] == 1
    assert done["worker_name"]
    assert done["hostname"]
    assert done["pid"]
    assert done["started_at"] and done["finished_at"]
    output = client.get(f"/api/deployments/{run['id']}/output").get_data(as_text=True)
    assert "PLAY RECAP" in output
    assert "localhost" in output


def test_failing_playbook_ends_failed_with_reason(client, processes):
    processes.worker()

    run = launch(client, "fail.yml", "localhost")
    done = wait_status(client, run["id"], {"successful", "failed"})

    assert done["status"] == "failed"
    assert done["rc"] == 2
    assert "failed on localhost" in done["reason"]
    assert done["stats"]["localhost"]["failures"] == 1
    assert done["progress"]["host_last_task"]["localhost"] == "A task that fails"


def test_output_readable_while_running(client, processes):
    processes.worker()

    run = launch(
        client, "slow.yml", "localhost", extra_vars={"steps": 20, "pause": 0.5}
    )
    wait_output(client, run["id"], "step", timeout=30)

    assert get_run(client, run["id"])["status"] == "running"
    wait_status(client, run["id"], "successful", timeout=60)


def test_check_mode_and_extra_vars_reach_ansible(client, processes):
    processes.worker()

    run = launch(
        client, "slow.yml", "localhost", extra_vars="steps: 2\npause: 0", check=True
    )
    done = wait_status(client, run["id"], {"successful", "failed"})

    assert done["status"] == "successful"
    assert done["check"] is True
    assert done["extra_vars"] == {"steps": 2, "pause": 0}


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"playbook": "nope.yml", "target": "localhost"}, "playbook", "'nope.yml'"),
        (
            {"playbook": "../etc/passwd", "target": "localhost"},
            "playbook",
            "'../etc/passwd'",
        ),
        (
            {"playbook": "/etc/passwd", "target": "localhost"},
            "playbook",
            "'/etc/passwd'",
        ),
        ({"playbook": "ping.yml", "target": "nohost"}, "target", "'nohost'"),
        ({"playbook": "ping.yml", "target": "--foo"}, "target", "'--foo'"),
        ({"playbook": "ping.yml", "target": "a;rm -rf /"}, "target", "'a;rm -rf /'"),
        ({"playbook": "ping.yml"}, "target", "target is required"),
        (
            {"playbook": "ping.yml", "target": "localhost", "extra_vars": "a: [1"},
            "extra_vars",
            "not valid YAML",
        ),
        (
            {"playbook": "ping.yml", "target": "localhost", "extra_vars": "[1, 2]"},
            "extra_vars",
            "expected a mapping",
        ),
        (
            {"playbook": "ping.yml", "target": "localhost", "extra_vars": 5},
            "extra_vars",
            "5",
        ),
        (
            {"playbook": "ping.yml", "target": "localhost", "timeout": -3},
            "timeout",
            "-3",
        ),
        (
            {"playbook": "ping.yml", "target": "localhost", "timeout": "soon"},
            "timeout",
            "'soon'",
        ),
        ({"playbook": "ping.yml", "target": "localhost", "timeout": 0}, "timeout", "0"),
        (
            {"playbook": "ping.yml", "target": "localhost", "check": "maybe"},
            "check",
            "'maybe'",
        ),
    ],
)
def test_launch_rejects_bad_input(app, client, body, field, fragment):
    response = client.post("/api/deployments", json=body)

    assert response.status_code == 400
    payload = response.get_json()
    assert payload["field"] == field
    assert fragment in payload["error"]
    assert count_runs(app) == 0


def test_launch_rejects_non_object_body(app, client):
    response = client.post(
        "/api/deployments", data="not json", content_type="application/json"
    )

    assert response.status_code == 400
    assert "JSON object" in response.get_json()["error"]
    assert count_runs(app) == 0


def test_unknown_run_is_404_json(client):
    for path in ("/api/deployments/999", "/api/deployments/999/output"):
        response = client.get(path)
        assert response.status_code == 404
        assert "999" in response.get_json()["error"]


def test_playbooks_lists_shipped_examples(client):
    playbooks = {
        p["path"]: p for p in client.get("/api/playbooks").get_json()["playbooks"]
    }

    for name in (
        "ping.yml",
        "facts.yml",
        "update-debian.yml",
        "update-redhat.yml",
        "update-windows.yml",
        "slow.yml",
        "fail.yml",
    ):
        assert name in playbooks
    assert playbooks["update-debian.yml"]["os_family"] == "Debian"
    assert playbooks["update-redhat.yml"]["os_family"] == "RedHat"
    assert playbooks["update-windows.yml"]["os_family"] == "Windows"
    assert playbooks["ping.yml"]["description"]


def test_playbook_without_metadata_listed_by_file_name(app, client):
    (
        app.config["PLAYBOOK_DIR"]
        and __import__("pathlib").Path(app.config["PLAYBOOK_DIR"], "bare.yml")
    ).write_text("- hosts: all\n  tasks: []\n")

    playbooks = {
        p["path"]: p for p in client.get("/api/playbooks").get_json()["playbooks"]
    }

    assert playbooks["bare.yml"]["name"] == "bare"


def test_targets_lists_inventory(client):
    targets = client.get("/api/targets").get_json()

    assert {"name": "localhost", "kind": "host", "os_family": "Linux"} in targets[
        "hosts"
    ]
    assert "local" in {g["name"] for g in targets["groups"]}


def test_list_filters_and_pages(client, app):
    ids = [launch(client)["id"] for _ in range(3)]

    page = client.get("/api/deployments?limit=2").get_json()
    assert [d["id"] for d in page["deployments"]] == ids[::-1][:2]
    assert page["next_before"] == ids[1]
    rest = client.get(
        f"/api/deployments?limit=2&before={page['next_before']}"
    ).get_json()
    assert [d["id"] for d in rest["deployments"]] == [ids[0]]
    assert client.get("/api/deployments?status=failed").get_json()["deployments"] == []
    bad = client.get("/api/deployments?status=bogus")
    assert bad.status_code == 400
    assert "'bogus'" in bad.get_json()["error"]
