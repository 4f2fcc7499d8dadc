"""Start an RQ worker for Shepherd's queue, with its death handlers installed.

Usage: python worker.py [--name NAME] [--burst]. Configuration comes from
the same environment variables as the web app (see webapp/config.py).
"""

import argparse
import logging
import threading
import time

from redis.exceptions import RedisError

from jobs.handlers import RunWorker
from jobs.sweep import reap_host
from webapp import create_app
from webapp.catalog import CatalogError
from webapp.extensions import db
from webapp.redis_conn import connect, get_notify_queue, get_queue
from webapp.retention import clean_artifacts

logger = logging.getLogger("worker")

# Seconds between deletions of the artifact folders of long-ended runs.
ARTIFACT_CLEANUP_INTERVAL = 60.0


def wait_for_redis(connection, url, timeout=30.0):
    """Return once Redis responds to PING; exit with a clear message after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.ping()
            return
        except RedisError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"worker: Redis at {url} is unreachable after {timeout:g} s ({exc}). "
                    "Start it (make run starts the embedded one) or fix REDIS_URL."
                ) from exc
            time.sleep(0.5)


def reap_forever(app, interval):
    """Run the host-local sweep every ``interval`` seconds in a daemon thread."""
    next_cleanup = 0.0
    with app.app_context():
        while True:
            time.sleep(interval)
            try:
                reap_host(app.config["HOSTNAME"])
                reap_host(app.config["HOSTNAME"], finalize=False)
                # Artifact folders live on the host that ran the playbook.
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + ARTIFACT_CLEANUP_INTERVAL
                    clean_artifacts(app.config)
            except Exception:
                logger.exception(
                    "worker: host sweep failed; retrying in %s s", interval
                )
            finally:
                db.session.remove()


def warm_inventory(app):
    """Read the inventory once here, so work horses inherit it when they fork.

    Each horse expands its run's target to take host leases; without this,
    every horse would start ansible-inventory again.
    """
    try:
        app.extensions["inventory"].data()
    except CatalogError as exc:
        logger.warning("worker: could not read the inventory yet: %s", exc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="worker name (default: RQ's generated name)")
    parser.add_argument(
        "--burst", action="store_true", help="exit when the queue is empty"
    )
    args = parser.parse_args()

    app = create_app()
    config = app.config
    connection = connect(config["REDIS_URL"])
    wait_for_redis(connection, config["REDIS_URL"])
    app.app_context().push()

    # Startup reconciliation: end this host's runs whose horse died with an
    # earlier worker, and kill what they left behind.
    counts = reap_host(config["HOSTNAME"])
    counts.update(
        orphans_killed=reap_host(config["HOSTNAME"], finalize=False)["orphans_killed"]
    )
    logger.info("worker: startup check on host %s: %s", config["HOSTNAME"], counts)
    db.session.remove()
    warm_inventory(app)

    threading.Thread(
        target=reap_forever,
        args=(app, config["SWEEP_INTERVAL"]),
        name="host-sweep",
        daemon=True,
    ).start()

    # Notifications first: a delivery is short and should not wait for runs.
    worker = RunWorker(
        [get_notify_queue(config, connection), get_queue(config, connection)],
        connection=connection,
        name=args.name,
        worker_ttl=config["WORKER_TTL"],
    )
    logger.info(
        "worker: %s on host %s, queue %s",
        worker.name,
        config["HOSTNAME"],
        config["QUEUE_NAME"],
    )
    worker.work(
        burst=args.burst, logging_level=logging.getLevelName(logging.getLogger().level)
    )
    logger.info("worker: %s stopped", worker.name)


if __name__ == "__main__":
    main()
