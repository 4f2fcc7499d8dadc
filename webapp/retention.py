"""Retention: delete the output and artifact folders of old runs, keeping their rows.

``prune`` is the ``flask prune`` command and the daily scheduled prune;
``clean_artifacts`` deletes ansible-runner folders (ARTIFACT_DIR/<run>-<attempt>)
of runs that ended longer than ARTIFACT_RETENTION ago, once their output is in
SQL. Both are safe to run twice and from several processes at once.
"""

import logging
import shutil
from datetime import timedelta
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import delete, func, select

from .config import ConfigError, parse_age
from .extensions import db
from .models import TERMINAL_STATUSES, Deployment, OutputChunk, database_time

logger = logging.getLogger(__name__)

PRUNED_NOTE = "[shepherd] output pruned"
LAST_PRUNE_KEY = "shepherd:prune:last"
TERMINAL = [status.value for status in TERMINAL_STATUSES]


def _artifact_folders(artifact_dir):
    """Yield (path, run_id, attempt) for each run folder under ``artifact_dir``."""
    root = Path(artifact_dir)
    if not root.is_dir():
        return
    for path in root.iterdir():
        run_id, _, attempt = path.name.partition("-")
        if path.is_dir() and run_id.isdigit() and attempt.isdigit():
            yield path, int(run_id), int(attempt)


def prune(older_than, dry_run=False):
    """Delete output chunks and artifact folders of runs that ended ``older_than`` seconds ago.

    Each pruned run keeps its row and gets one output line saying when its
    output was pruned. Returns {"runs", "chunks", "folders"}.
    """
    now = database_time()
    cutoff = now - timedelta(seconds=older_than)
    old_runs = select(Deployment.id).where(
        Deployment.status.in_(TERMINAL), Deployment.finished_at < cutoff
    )
    chunk_counts = dict(
        db.session.execute(
            select(OutputChunk.deployment_id, func.count())
            .where(
                OutputChunk.deployment_id.in_(old_runs),
                OutputChunk.text.not_like(f"{PRUNED_NOTE}%"),
            )
            .group_by(OutputChunk.deployment_id)
        ).all()
    )
    old_ids = set(db.session.scalars(old_runs))
    folders = [
        path
        for path, run_id, _ in _artifact_folders(current_app.config["ARTIFACT_DIR"])
        if run_id in old_ids
    ]
    result = {
        "runs": len(chunk_counts),
        "chunks": sum(chunk_counts.values()),
        "folders": len(folders),
    }
    if dry_run:
        return result

    note = (
        f"{PRUNED_NOTE} on {now:%Y-%m-%d} (ended before {cutoff:%Y-%m-%d %H:%M} UTC)\n"
    )
    for run_id in sorted(chunk_counts):
        db.session.execute(
            delete(OutputChunk).where(OutputChunk.deployment_id == run_id)
        )
        db.session.add(OutputChunk(deployment_id=run_id, text=note))
        db.session.commit()
    for path in folders:
        shutil.rmtree(path, ignore_errors=True)
    logger.info(
        "prune: deleted %d output chunks of %d runs and %d artifact folders "
        "(runs ended before %s)",
        result["chunks"],
        result["runs"],
        result["folders"],
        cutoff.isoformat(),
    )
    return result


def clean_artifacts(config):
    """Delete artifact folders of runs that ended over ARTIFACT_RETENTION seconds ago.

    Folders of active runs, of unknown runs and of runs ended recently are
    kept. Returns how many folders were deleted.
    """
    folders = list(_artifact_folders(config["ARTIFACT_DIR"]))
    if not folders:
        return 0
    cutoff = database_time() - timedelta(seconds=config["ARTIFACT_RETENTION"])
    ended = set(
        db.session.scalars(
            select(Deployment.id).where(
                Deployment.id.in_({run_id for _, run_id, _ in folders}),
                Deployment.status.in_(TERMINAL),
                Deployment.finished_at < cutoff,
            )
        )
    )
    deleted = 0
    for path, run_id, _ in folders:
        if run_id in ended:
            shutil.rmtree(path, ignore_errors=True)
            deleted += 1
    if deleted:
        logger.info("retention: deleted %d artifact folders of ended runs", deleted)
    return deleted


def housekeeping(connection, config):
    """Clean artifact folders, and prune once per PRUNE_INTERVAL across all schedulers.

    The scheduler calls this from its loop. A Redis key with PRUNE_INTERVAL
    as its expiry decides which process prunes. Returns what was done.
    """
    done = {"artifact_folders": clean_artifacts(config), "pruned": None}
    older_than = config["PRUNE_OLDER_THAN"]
    if older_than is None:
        return done
    interval = max(1, int(config["PRUNE_INTERVAL"]))
    if connection.set(LAST_PRUNE_KEY, config["HOSTNAME"], nx=True, ex=interval):
        done["pruned"] = prune(older_than)
    return done


@click.command("prune")
@with_appcontext
@click.option(
    "--older-than",
    "older_than",
    default="90d",
    show_default=True,
    help="Age of a run's end past which its output is deleted: a number with a "
    "unit s, m, h, d or w (days when none).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print what would be deleted and delete nothing."
)
def prune_command(older_than, dry_run):
    """Delete output and artifact folders of runs that ended before --older-than.

    The runs' rows (status, reason, times, stats) are kept. Artifact folders
    are deleted on this host only.
    """
    try:
        seconds = parse_age(older_than)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    result = prune(seconds, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{'Dry run: ' if dry_run else ''}{verb} {result['chunks']} output chunk(s) of "
        f"{result['runs']} run(s) and {result['folders']} artifact folder(s)."
    )
