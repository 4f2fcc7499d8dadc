"""Why a queued run has not started yet: one reason, computed when it is read.

The first reason that applies wins. In order: the service is draining, a
host of the run is leased by another run, or no worker is alive. Then: the
run waits for its next try after a lease wait (only the scheduler process
queues it), every worker is busy, or a worker is about to take it.
SQL gives drain mode and leases; Redis gives workers and the job's place.
"""

import json
import time

from flask import current_app, g
from redis.exceptions import RedisError
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from jobs import drain, leases
from jobs.sweep import LAST_SWEEP_KEY

from .catalog import CatalogError
from .models import RunStatus

# Seconds that one read of workers and drain mode serves, so that a page of
# runs or a live event stream does not ask Redis for every run it shows.
VIEW_TTL = 1.0


class QueueView:
    """The service-wide facts that every queued run's reason shares."""

    def __init__(self):
        from .launch import queue

        self.created = time.monotonic()
        self.draining = drain.is_draining()
        self.redis_error = None
        self.alive = self.busy = 0
        self.last_sweep = None
        try:
            self.queue = queue()
            workers = Worker.all(connection=self.queue.connection, queue=self.queue)
            self.alive = len(workers)
            self.busy = sum(1 for worker in workers if worker.get_state() == "busy")
            self.last_sweep = self.queue.connection.get(LAST_SWEEP_KEY)
        except RedisError as exc:
            self.redis_error = str(exc)

    def scheduler_alive(self):
        """Return True if the scheduler process swept recently.

        Only that process moves a waiting run's next try to the queue.
        """
        if not self.last_sweep:
            return False
        every = current_app.config["SWEEP_INTERVAL"]
        age = time.time() - json.loads(self.last_sweep)["at"]
        return age < max(3 * every, 30)

    def job_status(self, job_id):
        try:
            job = Job.fetch(job_id, connection=self.queue.connection)
        except NoSuchJobError:
            return None
        return job.get_status(refresh=False)


def _view():
    view = g.get("shepherd_queue_view")
    if view is None or time.monotonic() - view.created > VIEW_TTL:
        view = g.shepherd_queue_view = QueueView()
    return view


def queue_reason(run):
    """Return {code, message, ...} for a queued run, or None for any other run."""
    if run.status != RunStatus.QUEUED.value:
        return None
    view = _view()
    if view.draining:
        return {
            "code": "draining",
            "message": "the service is draining: no run starts until an admin "
            "turns drain mode off",
        }

    blocking = _blocking_leases(run)
    if blocking:
        return {
            "code": "host_leased",
            "message": leases.describe_wait(blocking),
            "holders": blocking,
        }

    if view.redis_error:
        return {
            "code": "unknown",
            "message": f"Redis is unreachable ({view.redis_error}), so the "
            "workers cannot be checked",
        }
    if view.alive == 0:
        return {
            "code": "no_worker",
            "message": "no worker is alive: start one with python worker.py",
        }
    return _worker_reason(run, view)


def _worker_reason(run, view):
    try:
        status = view.job_status(run.job_id) if run.job_id else None
        position = view.queue.get_job_position(run.job_id) if run.job_id else None
    except RedisError as exc:
        return {"code": "unknown", "message": f"Redis is unreachable ({exc})"}
    if status == JobStatus.SCHEDULED and not view.scheduler_alive():
        return {
            "code": "no_scheduler",
            "message": "its next try waits for the scheduler, which is not "
            "running: start it with python scheduler.py",
        }
    if status == JobStatus.SCHEDULED:
        return {
            "code": "retry_due",
            "message": "its hosts are free now; it starts at its next try, "
            "within a few seconds",
        }
    position = None if position is None else position + 1
    if view.busy >= view.alive:
        where = f"; position {position} in the queue" if position else ""
        return {
            "code": "workers_busy",
            "message": f"all {view.alive} worker(s) are busy{where}",
            "position": position,
        }
    return {
        "code": "starting",
        "message": "a worker is free and about to start it",
        "position": position,
    }


def _blocking_leases(run):
    config = current_app.config
    try:
        hosts = leases.hosts_for(
            run, current_app.extensions["inventory"], config["PLAYBOOK_DIR"]
        )
    except CatalogError:
        return []
    return leases.holders(hosts, run.id)
