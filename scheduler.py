"""Start rq-scheduler for Shepherd, with the sweep that ends abandoned runs.

The sweep runs inside this process's scheduling loop every SWEEP_INTERVAL
seconds, so it happens even when no worker is alive. Usage: python scheduler.py.
"""

import logging
import os
import time

from redis.exceptions import RedisError
from rq.scheduler import RQScheduler
from rq_scheduler import Scheduler

from jobs import schedules
from jobs.liveness import HeartbeatWatch
from jobs.sweep import sweep
from webapp import create_app
from webapp.catalog import CatalogError
from webapp.extensions import db
from webapp.redis_conn import connect, get_notify_queue, get_queue
from webapp.retention import housekeeping
from worker import wait_for_redis

logger = logging.getLogger("scheduler")

# Seconds between artifact cleanups; the prune itself runs once a PRUNE_INTERVAL.
HOUSEKEEPING_INTERVAL = 60.0


class SweepingScheduler(Scheduler):
    """rq-scheduler whose loop also runs Shepherd's sweep and fires schedules."""

    def __init__(self, *args, app, watch, **kwargs):
        super().__init__(*args, **kwargs)
        self.app = app
        self.watch = watch
        self.sweep_every = app.config["SWEEP_INTERVAL"]
        self.next_sweep = 0.0
        self.next_housekeeping = 0.0
        self.retry_scheduler = RQScheduler(
            [get_notify_queue(app.config, self.connection)], self.connection
        )

    def run(self, burst=False):
        # rq-scheduler's loop ends on the first Redis error, for example while
        # Redis restarts, and under honcho one exited process stops them all.
        # So wait for Redis and start the loop again.
        while True:
            try:
                return super().run(burst=burst)
            except RedisError as exc:
                logger.warning("scheduler: lost Redis (%s); waiting for it", exc)
                wait_for_redis(self.connection, self.app.config["REDIS_URL"], 300)
                # Mark the old registration dead, so register_birth accepts ours.
                self.register_death()

    def enqueue_jobs(self):
        self.sync_schedules()
        jobs = super().enqueue_jobs()
        self.enqueue_retries()
        if time.monotonic() >= self.next_sweep:
            self.next_sweep = time.monotonic() + self.sweep_every
            self.run_sweep()
        if time.monotonic() >= self.next_housekeeping:
            self.next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
            self.run_housekeeping()
        return jobs

    def enqueue_job(self, job):
        # A schedule's trigger runs here rather than on a worker, so a busy
        # worker never delays it; it queues the playbook job itself.
        if job.func_name != schedules.FIRE_FUNC:
            return super().enqueue_job(job)
        try:
            schedules.handle_due(self.connection, self.app.config, job.args[0])
        finally:
            db.session.remove()

    def enqueue_retries(self):
        """Move notification deliveries whose retry time has come back onto their queue.

        rq.Retry with intervals parks failed jobs in RQ's scheduled registry.
        Shepherd's workers run no RQ scheduler, because it would be one more
        child process beside the work horse, so this loop moves them.
        """
        try:
            if self.retry_scheduler.acquire_locks():
                self.retry_scheduler.enqueue_scheduled_jobs()
        except RedisError:
            logger.exception("scheduler: could not enqueue notification retries")

    def run_housekeeping(self):
        try:
            housekeeping(self.connection, self.app.config)
        except Exception:
            logger.exception(
                "scheduler: retention housekeeping failed; retrying in %s s",
                HOUSEKEEPING_INTERVAL,
            )
        finally:
            db.session.remove()

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

    def sync_schedules(self):
        # Reload schedules from SQL on every loop, so a Redis restart or flush
        # delays no occurrence by more than one loop.
        try:
            schedules.sync(self.connection, self.app.config)
        except Exception:
            logger.exception("scheduler: loading schedules failed; retrying")
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
    # Read the inventory now, so the first scheduled run does not wait for it.
    try:
        app.extensions["inventory"].data()
    except CatalogError as exc:
        logger.warning("scheduler: %s; scheduled runs will fail until fixed", exc)

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
