"""A real run of a playbook that prints hostile text: shell characters, markup,
a no_log result and a secret value."""

import json
from pathlib import Path

from conftest import launch, wait_status

from jobs import secret_store
from webapp.extensions import db
from webapp.models import Deployment, OutputChunk

SECRET = "hunter2-b9c1e7"
# Not a secret var: only no_log keeps it out of the output.
HIDDEN = "nolog-4f7a2c"


def test_hostile_output_stays_text_and_secret(
    app, client, processes, redis_client, tmp_path
):
    processes.worker()
    marker = tmp_path / "pwned"
    message = f"x; touch {marker}; $(touch {marker}) `touch {marker}`"

    run = launch(
        client,
        "hostile_output.yml",
        "localhost",
        extra_vars={"message": message, "db_password": SECRET, "hidden": HIDDEN},
    )
    done = wait_status(client, run["id"], {"successful", "failed"})

    assert done["status"] == "successful", done["reason"]
    output = client.get(f"/api/deployments/{run['id']}/output").get_data(as_text=True)
    # Shell characters reach Ansible as data and run nowhere.
    assert f"message={message}" in output
    assert not marker.exists()
    # no_log results stay censored.
    assert HIDDEN not in output
    assert "'no_log: true' was specified" in output
    # The secret is masked in the output, the row, the page and Redis.
    assert SECRET not in output
    assert "password is ********" in output
    with app.app_context():
        chunks = db.session.scalars(db.select(OutputChunk.text)).all()
        assert all(SECRET not in text for text in chunks)
        row = db.session.get(Deployment, run["id"])
        assert row.extra_vars["db_password"] == "********"
        private_dir = Path(app.config["ARTIFACT_DIR"]) / f"{run['id']}-1"
    assert secret_store.load(redis_client, run["id"]) is None
    assert not (private_dir / "env" / "extravars").exists()
    command = json.loads((private_dir / "artifacts" / "run" / "command").read_text())
    assert isinstance(command["command"], list)
    assert all(
        SECRET not in part and message not in part for part in command["command"]
    )
    # Markup printed by the playbook is text on the run page.
    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert "&lt;script&gt;alert(" in page
    assert "<script>alert(" not in page
    assert SECRET not in page
