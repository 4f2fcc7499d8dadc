"""Start rq-scheduler for Shepherd, with the sweep that ends abandoned runs.

The sweep runs inside this process's scheduling loop every SWEEP_INTERVAL
seconds, so it happens even when no worker is alive. Usage: python scheduler.py.
"""

import logging
import os
import time

from rq_scheduler import Scheduler

from jobs.liveness import HeartbeatWatch
from jobs.sweep import sweep
from webapp import create_app
from webapp.extensions import db
from webapp.redis_conn import connect, get_queue
from worker import wait_for_redis

logger = logging.getLogger("scheduler")


class SweepingScheduler(Scheduler):
    """rq-scheduler whose loop also runs Shepherd's sweep."""

    def __init__(self, *args, app, watch, **kwargs):
        super().__init__(*args, **kwargs)
        self.app = app
        self.watch = watch
        self.sweep_every = app.config["SWEEP_INTERVAL"]
        self.next_sweep = 0.0

    def enqueue_jobs(self):
        jobs = super().enqueue_jobs()
        if time.monotonic() >= self.next_sweep:
            self.next_sweep = time.monotonic() + self.sweep_every
            self.run_sweep()
        return jobs

    def run_sweep(self):
        try:
            sweep(
                self.connection,
                get_queue(self.app.config, self.connection),
                self.watch,
            )
        except Exception:
            logger.exception(
                "scheduler: sweep failed; retrying in %s s", self.sweep_every
            )
            self.watch.forget()
        finally:
            db.session.remove()


def main():
    # rq-scheduler reads cron strings in local time: keep it on UTC.
    os.environ["TZ"] = "UTC"
    time.tzset()
    app = create_app()
    config = app.config
    connection = connect(config["REDIS_URL"])
    wait_for_redis(connection, config["REDIS_URL"])
    app.app_context().push()

    # Start-up reconciliation: one sweep before anything else. Heartbeat
    # ages are judged on what this process itself has seen, so a stale
    # heartbeat is noticed only after HEARTBEAT_GRACE of watching.
    watch = HeartbeatWatch()
    counts = sweep(connection, get_queue(config, connection), watch)
    logger.info("scheduler: start-up sweep on host %s: %s", config["HOSTNAME"], counts)
    db.session.remove()

    interval = min(1.0, config["SWEEP_INTERVAL"])
    scheduler = SweepingScheduler(
        queue_name=config["QUEUE_NAME"],
        connection=connection,
        interval=interval,
        app=app,
        watch=watch,
    )
    logger.info(
        "scheduler: started on host %s, sweep every %g s, queue %s",
        config["HOSTNAME"],
        config["SWEEP_INTERVAL"],
        config["QUEUE_NAME"],
    )
    try:
        # rq-scheduler stops on SIGINT and SIGTERM by raising SystemExit.
        scheduler.run(burst=False)
    finally:
        logger.info("scheduler: stopped")


if __name__ == "__main__":
    main()
