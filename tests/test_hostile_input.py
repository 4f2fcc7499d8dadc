"""Hostile input tables: playbook names, targets, extra vars and secrets, argument
lists for ansible-runner, escaping, security headers and error pages."""

import json
import shlex
from pathlib import Path

import pytest
import redis
from conftest import write_inventory

from jobs import secret_store
from jobs.playbook import Execution
from webapp import ansi
from webapp.extensions import db
from webapp.models import AuditEvent, Deployment

LAUNCH = {"playbook": "ping.yml", "target": "localhost"}


def count_runs(app):
    with app.app_context():
        return db.session.query(Deployment).count()


def post_launch(client, **fields):
    return client.post("/api/deployments", json={**LAUNCH, **fields})


@pytest.fixture
def operator(client_as):
    return client_as("operator")


@pytest.fixture
def hosts(app):
    """An inventory with groups web (web1, web2) and db (db1) beside localhost."""
    write_inventory(
        app.config["INVENTORY"],
        {
            "web1": {"group": "web", "ansible_connection": "local"},
            "web2": {"group": "web", "ansible_connection": "local"},
            "db1": {"group": "db", "ansible_connection": "local"},
        },
    )


# Playbook names.


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "../../playbooks/ping.yml",
        "./ping.yml",
        "/etc/passwd",
        "ping.yml; rm -rf /",
        "ping.yml && id",
        "$(id).yml",
        "`id`.yml",
        "ping.yml\n",
        "ping.yml --help",
        "--help",
        "ping.yml|id",
        "",
        None,
        ["ping.yml"],
        {"path": "ping.yml"},
    ],
)
def test_playbook_name_rejected(app, operator, name):
    response = post_launch(operator, playbook=name)

    assert response.status_code == 400
    assert response.get_json()["field"] == "playbook"
    assert count_runs(app) == 0


def test_playbook_absolute_path_inside_dir_rejected(app, operator):
    path = str(Path(app.config["PLAYBOOK_DIR"]) / "ping.yml")

    response = post_launch(operator, playbook=path)

    assert response.status_code == 400
    assert count_runs(app) == 0


def test_playbook_symlinks_out_of_dir_rejected(app, operator, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.yml").write_text("- hosts: all\n  tasks: []\n")
    playbook_dir = Path(app.config["PLAYBOOK_DIR"])
    (playbook_dir / "evil-link.yml").symlink_to(outside / "evil.yml")
    (playbook_dir / "evil-dir").symlink_to(outside)

    for name in ("evil-link.yml", "evil-dir/evil.yml"):
        response = post_launch(operator, playbook=name)
        assert response.status_code == 400, name
    listed = {p["path"] for p in operator.get("/api/playbooks").get_json()["playbooks"]}
    assert "evil-link.yml" not in listed
    assert "evil-dir/evil.yml" not in listed
    assert count_runs(app) == 0


def test_playbook_named_like_option_not_listed(app, operator):
    (Path(app.config["PLAYBOOK_DIR"]) / "--version.yml").write_text("- hosts: all\n")

    response = post_launch(operator, playbook="--version.yml")

    assert response.status_code == 400
    assert count_runs(app) == 0


# Targets and limit patterns.


@pytest.mark.parametrize(
    ("target", "selected"),
    [
        ("localhost", ["localhost"]),
        ("local", ["localhost"]),
        ("web", ["web1", "web2"]),
        ("web1,db1", ["db1", "web1"]),
        ("web:db", ["db1", "web1", "web2"]),
        ("web*", ["web1", "web2"]),
        ("w?b2", ["web2"]),
        ("all:!db", ["localhost", "web1", "web2"]),
        ("web:!web1", ["web2"]),
        ("all:&web", ["web1", "web2"]),
    ],
)
def test_target_patterns_accepted(app, hosts, operator, target, selected):
    response = post_launch(operator, target=target)

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["target"] == target
    with app.app_context():
        assert app.extensions["inventory"].validate_target(target) == selected


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("--foo", "not a host or group name"),
        ("-l", "not a host or group name"),
        ("--limit=all", "not a host or group name"),
        ("web;id", "not a host or group name"),
        ("web && id", "not a host or group name"),
        ("web|id", "not a host or group name"),
        ("$(id)", "not a host or group name"),
        ("`id`", "not a host or group name"),
        ("web\nlocalhost", "not a host or group name"),
        ("localhost\n", "not a host or group name"),
        (" localhost", "not a host or group name"),
        ("~web.*", "not a host or group name"),
        ("web[0]", "not a host or group name"),
        ("@/etc/passwd", "not a host or group name"),
        ("web::db", "not a host or group name"),
        ("!web", "start with a host or group"),
        ("&web", "start with a host or group"),
        ("nohost", "Unknown target 'nohost'"),
        ("nothing*", "matches no host"),
        ("web:!web", "selects no host"),
        ("web:&db", "selects no host"),
        ("a" * 300, "at most 255 characters"),
        ("", "target is required"),
    ],
)
def test_target_patterns_rejected(app, hosts, operator, target, fragment):
    response = post_launch(operator, target=target)

    assert response.status_code == 400
    payload = response.get_json()
    assert payload["field"] == "target"
    assert fragment in payload["error"]
    assert count_runs(app) == 0


# Extra vars.


@pytest.mark.parametrize(
    "extra_vars",
    [
        {"ansible_connection": "local"},
        {"ansible_host": "10.0.0.1"},
        {"ansible_user": "root"},
        {"ansible_port": 2222},
        {"ansible_become": True},
        {"ansible_become_user": "root"},
        {"ansible_become_method": "su"},
        {"ansible_ssh_common_args": "-o ProxyCommand='id'"},
        {"ansible_ssh_private_key_file": "/root/.ssh/id_rsa"},
        {"ansible_python_interpreter": "/bin/sh"},
        {"ansible_shell_executable": "/bin/sh"},
        {"ANSIBLE_BECOME": True},
        {"_ansible_no_log": False},
        {"hostvars": {}},
        {"inventory_hostname": "db1"},
        {"version": "{{ lookup('pipe', 'id') }}"},
        {"nested": {"list": ["{% if true %}x{% endif %}"]}},
        {"comment": "{# hidden #}"},
        "version: \"{{ lookup('env', 'HOME') }}\"",
    ],
)
def test_privileged_extra_vars_need_admin(app, operator, client, extra_vars):
    denied = post_launch(operator, extra_vars=extra_vars)

    assert denied.status_code == 403
    assert denied.get_json()["field"] == "extra_vars"
    assert "only admins" in denied.get_json()["error"]
    assert count_runs(app) == 0
    assert post_launch(client, extra_vars=extra_vars).status_code == 201


@pytest.mark.parametrize(
    ("extra_vars", "fragment"),
    [
        ({"a b": 1}, "Invalid extra var name 'a b'"),
        ({"1abc": 1}, "Invalid extra var name '1abc'"),
        ({"": 1}, "Invalid extra var name ''"),
        ({'x","ansible_become":true,"y': 1}, "Invalid extra var name"),
        ({"name\n": 1}, "Invalid extra var name"),
        ("[1, 2]", "expected a mapping"),
        ('"just a string"', "expected a mapping"),
        ("!!python/object/apply:os.system ['id']", "not valid YAML"),
        ({"blob": "x" * (64 * 1024 + 1)}, "the limit is 65536"),
        ([1, 2], "give a JSON object"),
    ],
)
def test_bad_extra_vars_rejected(app, client, extra_vars, fragment):
    response = post_launch(client, extra_vars=extra_vars)

    assert response.status_code == 400
    assert response.get_json()["field"] == "extra_vars"
    assert fragment in response.get_json()["error"]
    assert count_runs(app) == 0


def test_plain_extra_vars_with_shell_characters_accepted(operator):
    extra_vars = {"message": "a; rm -rf / && $(id) `id` | cat > /tmp/x"}

    response = post_launch(operator, extra_vars=extra_vars)

    assert response.status_code == 201
    assert response.get_json()["extra_vars"] == extra_vars


def test_relaunch_rechecks_privileged_vars(app, client, operator):
    run = post_launch(client, extra_vars={"ansible_user": "root"}).get_json()

    response = operator.post(f"/api/deployments/{run['id']}/relaunch")

    assert response.status_code == 403
    assert "'ansible_user'" in response.get_json()["error"]


# Secret extra vars.


def test_secret_vars_masked_everywhere(app, operator, redis_client, client):
    secret = "hunter2-correct-horse"
    extra_vars = {"db_password": secret, "API_TOKEN": "tok-12345", "version": "1.2"}

    run = post_launch(operator, extra_vars=extra_vars).get_json()

    assert run["extra_vars"] == {
        "db_password": "********",
        "API_TOKEN": "********",
        "version": "1.2",
    }
    assert run["secret_vars"] == ["API_TOKEN", "db_password"]
    stored = secret_store.load(redis_client, run["id"])
    assert stored == {"db_password": secret, "API_TOKEN": "tok-12345"}
    ttl = redis_client.ttl(secret_store.KEY.format(run_id=run["id"]))
    assert 0 < ttl <= run["timeout"] + secret_store.QUEUE_ALLOWANCE
    with app.app_context():
        row = db.session.get(Deployment, run["id"])
        assert secret not in json.dumps(row.extra_vars)
        events = db.session.scalars(db.select(AuditEvent)).all()
        assert all(secret not in json.dumps(e.detail) for e in events)
    page = operator.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert secret not in page
    assert "secret: API_TOKEN, db_password" in page
    assert secret not in client.get("/api/audit").get_data(as_text=True)


def test_secret_vars_from_playbook_header(app, operator, redis_client):
    (Path(app.config["PLAYBOOK_DIR"]) / "deploy.yml").write_text(
        "# secret_vars: release_code, other\n- hosts: all\n  tasks: []\n"
    )

    run = post_launch(
        operator, playbook="deploy.yml", extra_vars={"release_code": "abc-123"}
    ).get_json()

    assert run["extra_vars"] == {"release_code": "********"}
    assert secret_store.load(redis_client, run["id"]) == {"release_code": "abc-123"}


def test_secret_pattern_configurable(app, operator):
    app.config["SECRET_VAR_PATTERN"] = r"^pin$"

    run = post_launch(operator, extra_vars={"pin": "4711", "password": "x"}).get_json()

    assert run["extra_vars"] == {"pin": "********", "password": "x"}


def test_secret_run_cannot_be_relaunched(app, operator):
    run = post_launch(operator, extra_vars={"db_password": "hunter2"}).get_json()

    response = operator.post(f"/api/deployments/{run['id']}/relaunch")

    assert response.status_code == 400
    assert "db_password" in response.get_json()["error"]
    assert 'id="relaunch-button"' not in operator.get(f"/runs/{run['id']}").get_data(
        as_text=True
    )


def test_cancel_deletes_secret_values(operator, redis_client):
    run = post_launch(operator, extra_vars={"db_password": "hunter2"}).get_json()

    operator.post(f"/api/deployments/{run['id']}/cancel")

    assert secret_store.load(redis_client, run["id"]) is None


def test_redactor_masks_plain_and_json_escaped_values():
    redact = secret_store.redactor({"a": 'pa"ss\\word', "b": {"c": ["nested-1"]}})

    text = redact('plain pa"ss\\word, json "pa\\"ss\\\\word", nested-1')

    assert text == 'plain ********, json "********", ********'
    assert secret_store.redactor({"short": "ab"}) is None


# ansible-runner gets argument lists, never a shell command.


def test_runner_command_is_argument_list(app, operator, redis_client):
    from ansible_runner.interface import init_runner

    hostile = "x; touch /tmp/shepherd-pwned $(id)"
    run = post_launch(
        operator, extra_vars={"message": hostile, "db_password": "hunter2-secret"}
    ).get_json()

    with app.app_context():
        row = db.session.get(Deployment, run["id"])
        execution = Execution(row, 1, app.config)
        job = type(
            "Job", (), {"connection": redis.Redis.from_url(app.config["REDIS_URL"])}
        )
        assert execution.add_secret_values(job)
        execution.private_dir.mkdir(parents=True)
        execution.write_extravars()
        options = execution.runner_options()
        for key in ("event_handler", "cancel_callback"):
            options.pop(key)
        command = init_runner(**options).config.command

    assert isinstance(command, list)
    assert shlex.split(options["cmdline"]) == ["ping.yml"]
    assert command[command.index("--limit") + 1] == "localhost"
    assert command[command.index("-e") + 1] == f"@{execution.extravars_path}"
    assert all(hostile not in part for part in command)
    assert all("hunter2-secret" not in part for part in command)
    assert execution.extravars_path.stat().st_mode & 0o077 == 0
    written = json.loads(execution.extravars_path.read_text())
    assert written == {"message": hostile, "db_password": "hunter2-secret"}


# Escaping.


def test_ansi_output_escapes_markup():
    text = "\x1b[31m<script>alert(1)</script>\x1b[0m <img src=x onerror=alert(1)>"

    html = str(ansi.to_html(text))

    assert "<script" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<span class="ansi-fg-red">' in html


def test_user_strings_escaped_on_pages(app, client):
    marker = "<script>alert('x')</script>"
    run = post_launch(client, extra_vars={"note": marker}).get_json()

    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    history = client.get("/runs?playbook=" + marker).get_data(as_text=True)

    assert marker not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert marker not in history
    assert "&lt;script&gt;" in history


# Security headers and error pages.


@pytest.mark.parametrize("path", ["/", "/login", "/api/deployments", "/nope"])
def test_security_headers(client, anon_client, path):
    for response in (client.get(path), anon_client.get(path)):
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"


def test_pages_have_no_inline_scripts(client):
    run = post_launch(client).get_json()

    for path in ("/", "/launch", "/runs", f"/runs/{run['id']}", "/audit", "/login"):
        html = client.get(path, follow_redirects=True).get_data(as_text=True)
        assert "<script>" not in html, path
        assert " on" + "click=" not in html, path
        assert "style=" not in html, path


def test_not_found_pages(client):
    page = client.get("/no/such/page")
    api = client.get("/api/no/such/thing")

    assert page.status_code == 404
    assert page.mimetype == "text/html"
    assert "404 Not Found" in page.get_data(as_text=True)
    assert api.status_code == 404
    assert api.get_json()["error"]
    assert client.get("/runs/999").status_code == 404


def test_method_not_allowed_is_json_under_api(client):
    response = client.delete("/api/deployments")

    assert response.status_code == 405
    assert response.get_json()["error"]


def test_server_error_leaks_no_traceback(app, client):
    def explode():
        raise RuntimeError("database password is hunter2")

    app.add_url_rule("/explode", "explode", explode)
    app.add_url_rule("/api/explode", "api_explode", explode)
    app.config["PROPAGATE_EXCEPTIONS"] = False

    for path in ("/explode", "/api/explode"):
        response = client.get(path)
        body = response.get_data(as_text=True)
        assert response.status_code == 500, path
        assert "Traceback" not in body
        assert "hunter2" not in body
        assert "RuntimeError" not in body
    assert client.get("/api/explode").get_json()["error"]
