"""The users and tokens commands: first admin, listing, tokens printed once."""

import pytest

from webapp import auth
from webapp.extensions import db
from webapp.models import ApiToken, AuditEvent

PASSWORD = "a long enough password"


def test_users_check_prints_first_admin_hint(runner):
    result = runner.invoke(args=["users", "check"])

    assert result.exit_code == 0
    assert "users create admin --role admin" in result.output


def test_users_create_from_stdin(app, runner):
    result = runner.invoke(
        args=["users", "create", "alice", "--role", "admin", "--password-stdin"],
        input=PASSWORD + "\n",
    )

    assert result.exit_code == 0, result.output
    assert "Created user alice with role admin" in result.output
    with app.app_context():
        user = auth.find_user("alice")
        assert user.role == "admin"
        assert auth.check_password(user, PASSWORD)
        assert PASSWORD not in user.password_hash
        event = db.session.scalar(db.select(AuditEvent))
        assert (event.action, event.target, event.actor) == (
            "user.create",
            "alice",
            "cli",
        )
    assert runner.invoke(args=["users", "check"]).output == ""


def test_users_create_from_prompt(app, runner):
    result = runner.invoke(
        args=["users", "create", "bob", "--role", "operator"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )

    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    with app.app_context():
        assert auth.check_password(auth.find_user("bob"), PASSWORD)


@pytest.mark.parametrize(
    ("args", "password", "message"),
    [
        (["users", "create", "carol", "--role", "root"], PASSWORD, "'root'"),
        (["users", "create", "carol"], "short", "too short"),
        (["users", "create", "bad name"], PASSWORD, "Invalid user name 'bad name'"),
        (["users", "create", "-x"], PASSWORD, "No such option"),
    ],
)
def test_users_create_rejects_bad_input(app, runner, args, password, message):
    result = runner.invoke(args=[*args, "--password-stdin"], input=password + "\n")

    assert result.exit_code != 0
    assert message in result.output
    with app.app_context():
        assert auth.find_user("carol") is None


def test_users_create_rejects_duplicate(runner):
    args = ["users", "create", "alice", "--password-stdin"]
    runner.invoke(args=args, input=PASSWORD + "\n")

    result = runner.invoke(args=args, input=PASSWORD + "\n")

    assert result.exit_code == 1
    assert "User 'alice' already exists" in result.output


def test_users_list(runner):
    for name, role in (("alice", "admin"), ("bob", "viewer")):
        runner.invoke(
            args=["users", "create", name, "--role", role, "--password-stdin"],
            input=PASSWORD + "\n",
        )

    result = runner.invoke(args=["users", "list"])

    lines = result.output.splitlines()
    assert lines[0].startswith("alice\tadmin\t")
    assert lines[1].startswith("bob\tviewer\t")


def test_tokens_create_prints_token_once(app, runner, anon_client):
    runner.invoke(
        args=["users", "create", "robot", "--role", "operator", "--password-stdin"],
        input=PASSWORD + "\n",
    )

    result = runner.invoke(args=["tokens", "create", "robot", "--label", "ci"])

    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("shp_")
    assert len(token.splitlines()) == 1
    response = anon_client.get(
        "/api/deployments", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    with app.app_context():
        row = db.session.scalar(db.select(ApiToken))
        assert row.label == "ci"
        assert token not in (row.token_hash, row.prefix)
    listing = runner.invoke(args=["tokens", "list"]).output
    assert token not in listing
    assert "robot\tactive" in listing


def test_tokens_revoke(app, runner, anon_client):
    runner.invoke(
        args=["users", "create", "robot", "--password-stdin"], input=PASSWORD + "\n"
    )
    token = runner.invoke(args=["tokens", "create", "robot"]).stdout.strip()
    with app.app_context():
        token_id = db.session.scalar(db.select(ApiToken.id))

    result = runner.invoke(args=["tokens", "revoke", str(token_id)])

    assert result.exit_code == 0
    assert f"Token {token_id}" in result.output
    response = anon_client.get(
        "/api/deployments", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert "revoked" in runner.invoke(args=["tokens", "list"]).output


def test_tokens_errors_name_the_value(runner):
    created = runner.invoke(args=["tokens", "create", "ghost"])
    revoked = runner.invoke(args=["tokens", "revoke", "42"])

    assert created.exit_code == 1
    assert "User 'ghost' not found" in created.output
    assert revoked.exit_code == 1
    assert "Token 42 not found" in revoked.output


def test_users_set_role_disable_enable(app, runner, anon_client):
    runner.invoke(
        args=["users", "create", "dave", "--password-stdin"], input=PASSWORD + "\n"
    )
    token = runner.invoke(args=["tokens", "create", "dave"]).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}

    promoted = runner.invoke(args=["users", "set-role", "dave", "operator"])
    launched = anon_client.post(
        "/api/deployments",
        json={"playbook": "ping.yml", "target": "localhost"},
        headers=headers,
    )
    disabled = runner.invoke(args=["users", "disable", "dave"])
    blocked = anon_client.get("/api/deployments", headers=headers)
    enabled = runner.invoke(args=["users", "enable", "dave"])

    assert promoted.exit_code == 0
    assert "now has role operator (was viewer)" in promoted.output
    assert launched.status_code == 201
    assert disabled.exit_code == 0
    assert blocked.status_code == 401
    assert enabled.exit_code == 0
    assert anon_client.get("/api/deployments", headers=headers).status_code == 200


def test_users_set_password(app, runner):
    runner.invoke(
        args=["users", "create", "erin", "--password-stdin"], input=PASSWORD + "\n"
    )

    result = runner.invoke(
        args=["users", "set-password", "erin", "--password-stdin"],
        input="another long password\n",
    )
    missing = runner.invoke(args=["users", "set-role", "nobody", "admin"])

    assert result.exit_code == 0
    with app.app_context():
        user = auth.find_user("erin")
        assert auth.check_password(user, "another long password")
        assert not auth.check_password(user, PASSWORD)
    assert missing.exit_code == 1
    assert "User 'nobody' not found" in missing.output
