"""Command-line tools for operators: ``flask --app webapp <command>``."""

import getpass
from datetime import timedelta

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from .extensions import db
from .models import Deployment, RunStatus, database_time


def register(app):
    from .account_cli import tokens_command, users_command
    from .retention import prune_command

    app.cli.add_command(cleanup_stuck_deployments_command)
    app.cli.add_command(users_command)
    app.cli.add_command(tokens_command)
    app.cli.add_command(prune_command)
    app.cli.add_command(drain_command)


@click.command("drain")
@with_appcontext
@click.argument("action", type=click.Choice(["on", "off", "status"]))
@click.option(
    "--by",
    default=getpass.getuser,
    show_default="the current user",
    help="Name recorded as the one who turned drain mode on or off.",
)
def drain_command(action, by):
    """Turn drain mode on or off, or show it with the runs still running.

    While draining, queued runs do not start and running runs go on to their
    end; a restart is safe once none is running.
    """
    from jobs import drain

    if action == "status":
        status = drain.status()
    else:
        status = drain.set_draining(action == "on", requested_by=by)
    if status["draining"]:
        click.echo(f"Draining since {status['since']} (by {status['by']}).")
    else:
        click.echo("Not draining: queued runs start as workers take them.")
    click.echo(f"Running: {status['running']}, queued: {status['queued']}.")
    if status["safe_to_restart"]:
        click.echo("Safe to restart: no run is running.")
    elif status["draining"]:
        click.echo("Not safe to restart yet: wait for the running runs to end.")


@click.command("cleanup-stuck-deployments")
@click.option(
    "--dry-run", is_flag=True, help="Print what would change and change nothing."
)
@click.option(
    "--timeout-hours",
    type=float,
    default=6.0,
    show_default=True,
    help="End runs that have been running or queued for longer than this many hours.",
)
@with_appcontext
def cleanup_stuck_deployments_command(dry_run, timeout_hours):
    """End runs stuck in running or queued for longer than --timeout-hours.

    Each is marked abandoned with an explanation appended to its output, and
    its processes on this host are killed. For installations that run no
    scheduler; with the scheduler running, its sweeps do this within seconds.
    """
    from jobs import handlers

    if timeout_hours <= 0:
        raise click.BadParameter(
            f"{timeout_hours!r} is not a positive number of hours.",
            param_hint="--timeout-hours",
        )
    now = database_time()
    cutoff = now - timedelta(hours=timeout_hours)
    click.echo(f"Current time: {now.isoformat()}")
    click.echo(f"Cutoff:       {cutoff.isoformat()} ({timeout_hours:g} h ago)")
    runs = db.session.scalars(
        select(Deployment)
        .where(
            Deployment.status.in_([RunStatus.RUNNING.value, RunStatus.QUEUED.value]),
            # A retried run counts from its retry, not from its launch.
            db.func.coalesce(
                Deployment.started_at, Deployment.retry_at, Deployment.queued_at
            )
            < cutoff,
        )
        .order_by(Deployment.id)
    ).all()
    ended = 0
    for run in runs:
        since = run.started_at or run.retry_at or run.queued_at
        hours = (now - since).total_seconds() / 3600
        kind = "scheduled" if run.trigger.startswith("schedule") else "manual"
        click.echo(
            f"  run {run.id}: {run.playbook} on {run.target} ({kind}), {run.status} since "
            f"{since.isoformat()}, for {hours:.1f} hours"
        )
        if dry_run:
            continue
        reason = (
            f"ended by cleanup-stuck-deployments: {run.status} for {hours:.1f} hours, "
            f"longer than {timeout_hours:g} hours"
        )
        ended += handlers.end_here(
            run.id,
            None,
            RunStatus.ABANDONED,
            reason,
            reason_code="manual_cleanup",
            decided_by="cleanup-stuck-deployments",
            evidence={
                "hours": round(hours, 3),
                "cutoff": cutoff.isoformat(),
                "host": current_app.config["HOSTNAME"],
            },
        )
    if dry_run:
        click.echo(f"Dry run: {len(runs)} stuck run(s) found, nothing changed.")
    else:
        click.echo(f"{len(runs)} stuck run(s) found, {ended} marked abandoned.")
