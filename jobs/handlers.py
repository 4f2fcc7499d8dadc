"""Handlers for runs whose job ends badly: RQ callbacks and worker death handlers.

These run in the worker process (or, for ``on_failure``, in the work horse)
on the host that ran the job, so they may signal the run's processes and
read its output file. Each ends the run through jobs.state, so a handler
that loses a race with the job or a sweep changes nothing.
"""

import logging
import os
import signal

from flask import current_app
from rq.exceptions import AbandonedJobError
from rq.worker import Worker

from webapp.extensions import db
from webapp.models import Deployment, RunStatus

from . import output, process, state
from .events import progress_from_artifacts

logger = logging.getLogger(__name__)


def _run_of(job):
    from .queueing import run_of

    return run_of(job)


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def end_here(
    run_id,
    attempt,
    status,
    reason,
    *,
    reason_code,
    decided_by,
    evidence=None,
    last_heartbeat=None,
):
    """Kill a run's processes on this host, keep its output and end it.

    With ``last_heartbeat``, nothing happens if a newer heartbeat has been
    written since: the verdict was judged on that heartbeat. Returns True if
    this call ended the run. Safe to call twice.
    """
    db.session.rollback()
    run = db.session.get(Deployment, run_id, populate_existing=True)
    if run is None:
        logger.warning("run %s: not found; nothing to end", run_id)
        return False
    if last_heartbeat is not None and run.heartbeat_at != last_heartbeat:
        logger.info(
            "run %s: heartbeat at %s arrived after the one judged (%s); no %s verdict",
            run_id,
            run.heartbeat_at,
            last_heartbeat,
            reason_code,
        )
        return False
    hostname = current_app.config["HOSTNAME"]
    progress = run.progress
    same_host = run.hostname == hostname
    if attempt is not None and attempt != run.attempt:
        # A retry owns the run now: kill only what this attempt left, and
        # leave the row and the output to the new attempt.
        process.kill_run(hostname, run_id, attempt=attempt)
        return False
    evidence = {
        "worker": run.worker_name,
        "host": run.hostname,
        "pid": run.pid,
        "last_heartbeat": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
        **(evidence or {}),
    }
    verdict = dict(
        attempt=attempt,
        decided_by=decided_by,
        reason_code=reason_code,
        evidence=evidence,
        progress=progress,
        last_heartbeat=last_heartbeat,
    )
    if same_host and last_heartbeat is not None:
        # A verdict judged on a heartbeat may lose to one that lands now, so
        # claim the run before killing anything: a slow horse keeps running.
        if run.artifact_dir:
            verdict["progress"] = progress_from_artifacts(run.artifact_dir) or progress
        if not state.finish(run_id, status, reason, **verdict):
            return False
        process.kill_run(hostname, run_id, run.pid, run.pid_started)
        output.catch_up(run)
        state.explain(run_id, status, reason)
        return True
    if same_host:
        process.kill_run(hostname, run_id, run.pid, run.pid_started)
        output.catch_up(run)
        if run.artifact_dir:
            progress = progress_from_artifacts(run.artifact_dir) or progress
            verdict["progress"] = progress
    return state.finish(run_id, status, reason, explain=True, **verdict)


def on_horse_killed(worker, job, retpid, ret_val):
    """End the run of a work horse that died without finishing it (signal, OOM)."""
    run = _run_of(job)
    if run is None:
        return
    run_id, attempt = run
    if ret_val is not None and os.WIFSIGNALED(ret_val):
        ending = f"was killed by {signal_name(os.WTERMSIG(ret_val))}"
    else:
        ending = f"exited with status {ret_val} before finishing the run"
    reason = (
        f"the work horse (pid {retpid}) of worker {worker.name} on host "
        f"{current_app.config['HOSTNAME']} {ending}"
    )
    end_here(
        run_id,
        attempt,
        RunStatus.ABANDONED,
        reason,
        reason_code="horse_killed",
        decided_by="worker",
        evidence={"horse_pid": retpid, "wait_status": ret_val, "rq_job": job.id},
    )


def on_failure(job, connection, exc_type, exc_value, traceback):
    """RQ failure callback: end the run if the job failed before doing so itself.

    RQ also calls it from any process that cleans the started registry, for
    a job whose registry entry expired (AbandonedJobError). The entry's
    expiry comes from the wall clock of the job's worker, so that alone
    proves nothing: the sweep ends such a run once its heartbeat is quiet.
    """
    run = _run_of(job)
    if run is None:
        return
    run_id, attempt = run
    if exc_type is AbandonedJobError:
        logger.warning(
            "run %s: RQ reports job %s abandoned; the sweep ends the run if its "
            "heartbeat is quiet",
            run_id,
            job.id,
        )
        return
    end_here(
        run_id,
        attempt,
        RunStatus.FAILED,
        f"the job failed: {exc_type.__name__}: {exc_value}",
        reason_code="job_failed",
        decided_by="worker",
        evidence={"rq_job": job.id, "exception": repr(exc_value)},
    )


def on_stopped(job, connection):
    """RQ stopped callback: the worker killed the horse on a stop-job command."""
    run = _run_of(job)
    if run is None:
        return
    run_id, attempt = run
    end_here(
        run_id,
        attempt,
        RunStatus.CANCELED,
        "stopped by an RQ stop-job command",
        reason_code="stopped",
        decided_by="operator",
        evidence={"rq_job": job.id},
    )


class RunWorker(Worker):
    """An RQ worker that ends its run when its work horse dies or it shuts down cold."""

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        on_horse_killed(self, job, retpid, ret_val)

    def unsubscribe(self):
        # RQ stops its command listener after sending UNSUBSCRIBE. When the
        # listener reads that reply before it learns to stop, it waits for
        # another message for up to 60 s, and redis-py's stop() waits with
        # it: the worker then lingers a minute after a warm shutdown. Asking
        # the listener to stop first (without waiting) lets the reply end it.
        if self.pubsub_thread is not None:
            self.pubsub_thread.stop(timeout=0)
        super().unsubscribe()

    def request_force_stop(self, signum, frame):
        job = self.get_current_job() if self.horse_pid else None
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            run = _run_of(job)
            if run is not None:
                end_here(
                    *run,
                    RunStatus.ABANDONED,
                    f"worker {self.name} on host {current_app.config['HOSTNAME']} was "
                    f"shut down cold ({signal_name(signum)} twice) and killed its work horse",
                    reason_code="cold_shutdown",
                    decided_by="worker",
                    evidence={"rq_job": job.id, "signal": signal_name(signum)},
                )
            raise
