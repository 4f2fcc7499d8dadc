"""Command-line tools for accounts: ``flask --app webapp users ...`` and ``tokens ...``."""

import sys

import click
from flask.cli import AppGroup
from sqlalchemy import select

from . import accounts, auth
from .extensions import db
from .models import ApiToken, Role, User

FIRST_ADMIN_HINT = (
    "No admin account exists yet. Create the first one with:\n"
    "  .venv/bin/flask --app webapp users create admin --role admin\n"
    "(it asks for the password; --password-stdin reads it from standard input)."
)


def _fail(exc):
    raise click.ClickException(str(exc)) from exc


users_command = AppGroup(
    "users", help="Create, list and change the people who may sign in."
)


@users_command.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=Role.VIEWER.value,
    show_default=True,
    help="What the user may do: viewer reads, operator also launches and "
    "cancels, admin also manages schedules, users and settings.",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of a prompt.",
)
def create_user_command(name, role, password_stdin):
    """Create user NAME with a password."""
    password = _read_password(name, password_stdin)
    try:
        user, _ = accounts.create(name, role, password, actor="cli")
    except auth.AccountError as exc:
        _fail(exc)
    click.echo(f"Created user {user.name} with role {user.role}.")


def _read_password(name, from_stdin):
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(
        f"Password for {name}", hide_input=True, confirmation_prompt=True
    )


def _existing_user(name):
    user = auth.find_user(name)
    if user is None:
        raise click.ClickException(
            f"User {name!r} not found. 'flask --app webapp users list' shows users."
        )
    return user


@users_command.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice([r.value for r in Role]))
def set_role_command(name, role):
    """Give user NAME the role ROLE; their tokens act with the new role."""
    user = _existing_user(name)
    try:
        before = accounts.update(user, role=role, actor="cli")
    except auth.AccountError as exc:
        _fail(exc)
    click.echo(f"User {name} now has role {role} (was {before['role']}).")


@users_command.command("set-password")
@click.argument("name")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of a prompt.",
)
def set_password_command(name, password_stdin):
    """Set a new password for user NAME."""
    user = _existing_user(name)
    try:
        accounts.set_password(user, _read_password(name, password_stdin), actor="cli")
    except auth.AccountError as exc:
        _fail(exc)
    click.echo(f"Password of {name} changed.")


@users_command.command("disable")
@click.argument("name")
def disable_user_command(name):
    """Stop user NAME from signing in or using their tokens."""
    try:
        accounts.update(_existing_user(name), disabled=True, actor="cli")
    except auth.AccountError as exc:
        _fail(exc)
    click.echo(f"User {name} is disabled.")


@users_command.command("enable")
@click.argument("name")
def enable_user_command(name):
    """Allow a disabled user NAME to sign in again."""
    accounts.update(_existing_user(name), disabled=False, actor="cli")
    click.echo(f"User {name} is enabled.")


@users_command.command("list")
def list_users_command():
    """List users with their role and last sign-in."""
    users = db.session.scalars(select(User).order_by(User.name)).all()
    if not users:
        click.echo(FIRST_ADMIN_HINT)
        return
    for user in users:
        last = user.last_login_at.isoformat() if user.last_login_at else "never"
        state = " (disabled)" if user.disabled else ""
        click.echo(f"{user.name}\t{user.role}{state}\tlast sign-in: {last}")


@users_command.command("check")
def check_users_command():
    """Print how to create the first admin when no admin exists yet."""
    admin = db.session.scalar(
        select(User.id).where(User.role == Role.ADMIN.value, User.disabled.is_(False))
    )
    if admin is None:
        click.echo(FIRST_ADMIN_HINT)


tokens_command = AppGroup("tokens", help="Create, list and revoke API tokens.")


@tokens_command.command("create")
@click.argument("name")
@click.option("--label", help="A note saying what the token is for.")
def create_token_command(name, label):
    """Create an API token acting as user NAME and print it once.

    Only a digest of the token is stored: copy it now, it cannot be shown
    again.
    """
    user = auth.find_user(name)
    if user is None:
        raise click.ClickException(
            f"User {name!r} not found. Create it first with "
            f"'flask --app webapp users create {name} --role ROLE'."
        )
    try:
        row, token = accounts.issue_token(user, label, actor="cli")
    except auth.AccountError as exc:
        _fail(exc)
    click.echo(token)
    click.echo(
        f"Token {row.id} ({row.prefix}...) acts as {user.name} ({user.role}). "
        "Send it as 'Authorization: Bearer <token>'.",
        err=True,
    )


@tokens_command.command("list")
def list_tokens_command():
    """List API tokens with their owner; revoked tokens are marked."""
    rows = db.session.execute(
        select(ApiToken, User.name)
        .join(User, User.id == ApiToken.user_id)
        .order_by(ApiToken.id)
    ).all()
    for row, owner in rows:
        state = f"revoked {row.revoked_at.isoformat()}" if row.revoked_at else "active"
        used = row.last_used_at.isoformat() if row.last_used_at else "never"
        click.echo(
            f"{row.id}\t{row.prefix}...\t{owner}\t{state}\tlast used: {used}"
            f"\t{row.label or ''}"
        )


@tokens_command.command("revoke")
@click.argument("token_id", type=int)
def revoke_token_command(token_id):
    """Revoke the API token with id TOKEN_ID (see 'tokens list')."""
    row = db.session.get(ApiToken, token_id)
    if row is None:
        raise click.ClickException(
            f"Token {token_id} not found. 'flask --app webapp tokens list' shows ids."
        )
    accounts.revoke_token(row, actor="cli")
    click.echo(f"Token {token_id} ({row.prefix}...) is revoked.")
