"""The ``run_playbook`` job: one execution of one run, inside an RQ work horse.

The job owns its run's row while it runs: it marks it running, keeps its
heartbeat and output current from a monitor thread, and writes the terminal
status. The worker's handlers (jobs.handlers) and the sweep (jobs.sweep)
finish the row when the job cannot.
"""

import json
import logging
import os
import shlex
import shutil
import threading
import time
from pathlib import Path

import ansible_runner
import psutil
from flask import current_app
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from webapp.extensions import db
from webapp.models import Deployment, RunStatus

from . import leases, output, process, retry, secret_store, state
from .events import Progress, stats_from_event

logger = logging.getLogger(__name__)

JOBS_DIR = Path(__file__).resolve().parent
# Started by ansible-runner in place of ansible-playbook; see the file itself.
GUARD = JOBS_DIR / "bin" / "ansible-playbook"
CALLBACK_DIR = JOBS_DIR / "ansible_plugins" / "callback"
# Seconds between writes of a run's play, task and host progress.
PROGRESS_INTERVAL = 1.0
# Seconds the monitor keeps retrying the copy of the last output when the
# database is unreachable as the playbook ends.
FLUSH_TIMEOUT = 25.0
# A prompt pattern, with no response, that matches the last character of
# every read from the playbook's terminal. pexpect (4.9) keeps all text read
# since the last match of an expect() pattern, and ansible-runner (2.4)
# otherwise expects only TIMEOUT and EOF, so the work horse would hold a copy
# (two, briefly) of everything the playbook prints. A match after every read
# keeps that buffer to about one read (pexpect's maxread, 2,000 characters).
END_OF_READ = r"(?s).\Z"


def run_playbook(run_id, attempt):
    """Run one execution of a deployment with ansible-runner and record it.

    Writes the run's state, heartbeats, output and result to SQL. Safe to
    run twice for the same attempt: the second execution finds the run no
    longer queued and does nothing.
    """
    db.engine.dispose(close=False)  # fresh connections in the forked horse
    config = current_app.config
    job = get_current_job()
    me = psutil.Process()
    if not leases.before_start(run_id, attempt, job):
        return "waiting"
    if not state.mark_running(
        run_id,
        attempt,
        worker_name=job.worker_name if job else None,
        hostname=config["HOSTNAME"],
        horse_pid=me.pid,
        horse_started=me.create_time(),
        artifact_dir=artifact_dir(config, run_id, attempt),
    ):
        leases.release_if_ended(run_id)
        return "skipped"

    run = db.session.get(Deployment, run_id)
    execution = Execution(run, attempt, config)
    if not execution.add_secret_values(job):
        return "failed"
    try:
        result = execution.run()
    except JobTimeoutException:
        execution.stop(
            RunStatus.TIMEOUT,
            f"exceeded its timeout of {run.timeout} s and was stopped",
            reason_code="job_timeout",
            decided_by="timeout",
            evidence={"timeout": run.timeout, "clock": "RQ job_timeout alarm"},
        )
        raise
    except BaseException as exc:
        execution.stop(
            RunStatus.FAILED,
            f"the worker failed while running the playbook: {exc!r}",
            reason_code="worker_error",
            decided_by="worker",
        )
        raise
    finally:
        execution.forget_secret_values(job)
    return result


def artifact_dir(config, run_id, attempt):
    """Return the folder where ansible-runner writes an execution's stdout and events."""
    return str(
        Path(config["ARTIFACT_DIR"]) / f"{run_id}-{attempt}" / "artifacts" / "run"
    )


class Execution:
    """The ansible-runner call of one attempt, with its monitor thread."""

    def __init__(self, run, attempt, config):
        self.run_id = run.id
        self.attempt = attempt
        self.config = config
        self.playbook = run.playbook
        self.target = run.target
        # A partial re-run names its hosts, each one checked against the
        # inventory at launch; all of them belong to the target.
        self.limit = ",".join(run.limit_hosts) if run.limit_hosts else run.target
        self.extra_vars = dict(run.extra_vars or {})
        self.check_mode = run.check_mode
        self.hostname = config["HOSTNAME"]
        self.private_dir = Path(config["ARTIFACT_DIR"]) / f"{run.id}-{attempt}"
        self.artifact_dir = self.private_dir / "artifacts"
        # ansible-runner writes into artifact_dir/<ident>; ident is "run".
        self.prompt_file = self.private_dir / "prompt.json"
        self.progress = Progress()
        self.monitor = Monitor(self)
        self.heartbeat = Heartbeat(self)
        self.pid = None
        self.pid_started = None
        self.lost_ownership = threading.Event()
        self.secret_vars = list(run.secret_vars or [])
        self.redact = None

    def add_secret_values(self, job):
        """Put the run's secret values from Redis into its extra vars.

        Returns False, after failing the run, when they are no longer there.
        """
        if not self.secret_vars:
            return True
        from webapp.redis_conn import connect

        connection = job.connection if job else connect(self.config["REDIS_URL"])
        values = secret_store.load(connection, self.run_id)
        if values is None:
            state.finish(
                self.run_id,
                RunStatus.FAILED,
                "the values of its secret extra vars "
                f"({', '.join(self.secret_vars)}) are no longer in Redis (expired "
                "or lost); launch it again with the values",
                attempt=self.attempt,
                decided_by="worker",
                reason_code="secrets_missing",
                explain=True,
            )
            return False
        self.extra_vars.update(values)
        self.redact = secret_store.redactor(values)
        return True

    def forget_secret_values(self, job):
        """Delete the run's secret values from Redis once the playbook ended."""
        if self.secret_vars and job is not None:
            secret_store.delete(job.connection, self.run_id)

    @property
    def extravars_path(self):
        return self.private_dir / "env" / "extravars"

    def write_extravars(self):
        """Write extra vars where ansible-runner passes them as ``-e @file``.

        A file, readable by this user only, keeps values out of the command
        line and ansible-runner's ``command`` artifact.
        """
        if not self.extra_vars:
            return
        self.extravars_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.extravars_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.extra_vars, handle)

    def remove_extravars(self):
        self.extravars_path.unlink(missing_ok=True)

    def runner_options(self):
        bin_dir = os.path.dirname(self.config["PYTHON"])
        envvars = {
            process.MARKER: process.marker_value(
                self.hostname, self.run_id, self.attempt
            ),
            "SHEPHERD_ANSIBLE_PLAYBOOK": shutil.which("ansible-playbook", path=bin_dir)
            or shutil.which("ansible-playbook"),
            "SHEPHERD_PROMPT_FILE": str(self.prompt_file),
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
            "ANSIBLE_CALLBACKS_ENABLED": "shepherd_prompt_guard",
            "ANSIBLE_FORCE_COLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }
        return dict(
            private_data_dir=str(self.private_dir),
            artifact_dir=str(self.artifact_dir),
            ident="run",
            project_dir=self.config["PLAYBOOK_DIR"],
            inventory=self.config["INVENTORY"],
            limit=self.limit,
            # Read by ansible-runner from env/extravars: see write_extravars.
            extravars=None,
            # With a custom binary ansible-runner does not add the playbook
            # itself. It splits this string back into arguments; no shell runs.
            cmdline=shlex.join(
                [self.playbook, *(["--check"] if self.check_mode else [])]
            ),
            envvars=envvars,
            binary=str(GUARD),
            quiet=True,
            event_handler=self.progress.on_event,
            cancel_callback=self.lost_ownership.is_set,
            passwords={END_OF_READ: None},
            # ansible-runner checks the cancel callback after every read and
            # at least this often, in seconds, while the playbook is silent.
            settings={"suppress_ansible_output": True, "pexpect_timeout": 1},
        )

    @property
    def run_artifact_dir(self):
        return artifact_dir(self.config, self.run_id, self.attempt)

    def run(self):
        self.private_dir.mkdir(parents=True, exist_ok=True)
        self.write_extravars()
        self.heartbeat.start()
        self.monitor.start()
        try:
            runner = ansible_runner.run(**self.runner_options())
        finally:
            self.remove_extravars()
            self.monitor.stop()
            self.heartbeat.stop()
        if self.lost_ownership.is_set():
            # Canceled or finalized by someone else, whose status is kept.
            # ansible-runner killed only ansible-playbook's process group.
            process.kill_run(self.hostname, self.run_id, attempt=self.attempt)
            return "superseded"

        stats = self.progress.stats or _stats_from_runner(runner)
        status, reason, code = self.verdict(runner.rc, stats)
        retry.write(
            self.run_id,
            "writing the result",
            state.finish,
            self.run_id,
            status,
            reason,
            attempt=self.attempt,
            decided_by="worker",
            reason_code=code,
            rc=runner.rc,
            stats=stats,
            progress=self.progress.snapshot(),
        )
        return status.value

    def verdict(self, rc, stats):
        """Return (status, reason, reason code) for a playbook that ended by itself."""
        prompt = self._prompt()
        if prompt:
            reason = (
                f"the playbook waits for keyboard input at the {prompt['kind']} prompt "
                f"{prompt['prompt']!r} ({prompt['where']}); pass the answer as an extra var"
            )
            return RunStatus.FAILED, reason, "waits_for_input"
        if rc == 0:
            return RunStatus.SUCCESSFUL, None, None
        failed = sorted(h for h, s in (stats or {}).items() if s.get("failures"))
        unreachable = sorted(h for h, s in (stats or {}).items() if s.get("dark"))
        parts = []
        if failed:
            parts.append("failed on " + ", ".join(failed))
        if unreachable:
            parts.append("unreachable: " + ", ".join(unreachable))
        if not parts:
            parts.append("ansible-playbook exited with an error before running tasks")
        code = "unreachable" if unreachable and not failed else "playbook_failed"
        return RunStatus.FAILED, f"{'; '.join(parts)} (return code {rc})", code

    def _prompt(self):
        try:
            return json.loads(self.prompt_file.read_text())
        except (OSError, ValueError):
            return None

    def stop(self, status, reason, *, reason_code, decided_by, evidence=None):
        """Kill the playbook's processes and record how the execution ended."""
        self.monitor.stop()
        self.heartbeat.stop()
        process.kill_run(
            self.hostname, self.run_id, self.pid, self.pid_started, self.attempt
        )
        self.remove_extravars()
        output.copy_new_output(
            self.run_id,
            self.run_artifact_dir,
            self._offset(),
            redact=self.redact,
            final=True,
            attempt=self.attempt,
        )
        state.finish(
            self.run_id,
            status,
            reason,
            attempt=self.attempt,
            decided_by=decided_by,
            reason_code=reason_code,
            evidence={"pid": self.pid, "host": self.hostname, **(evidence or {})},
            progress=self.progress.snapshot(),
            stats=self.progress.stats,
            explain=True,
        )

    def _offset(self):
        return db.session.get(
            Deployment, self.run_id, populate_existing=True
        ).output_offset

    def find_playbook_process(self):
        """Record ansible-playbook's PID once it runs (the horse's only child)."""
        if self.pid:
            return
        for child in psutil.Process().children():
            try:
                started = child.create_time()
                pgid = os.getpgid(child.pid)
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
            self.pid, self.pid_started = child.pid, started
            state.record_process(
                self.run_id,
                self.attempt,
                pid=child.pid,
                pgid=pgid,
                pid_started=started,
            )
            return


class Monitor(threading.Thread):
    """Copies output into SQL and records the playbook's PID.

    Runs in the work horse beside ansible-runner, which keeps the main thread.
    Heartbeats have a thread of their own (Heartbeat), so that a slow copy of
    a large output never delays them.
    """

    def __init__(self, execution):
        super().__init__(name=f"monitor-{execution.run_id}", daemon=True)
        self.execution = execution
        self.app = current_app._get_current_object()
        self.stopping = threading.Event()
        self.offset = 0

    def run(self):
        with self.app.app_context():
            self.loop()
            self.flush()

    def loop(self):
        execution = self.execution
        interval = execution.config["OUTPUT_FLUSH_INTERVAL"]
        backoff = retry.Backoff(first=interval)
        wait = interval
        while not self.stopping.wait(wait):
            started = time.monotonic()
            try:
                self.copy()
            except Exception as exc:
                # A database hiccup must not kill the monitor: the bytes stay
                # in the stdout file and the next try copies them.
                retry.rollback()
                wait = backoff.failed()
                log = logger.exception if backoff.failures == 1 else logger.warning
                log(
                    "run %s: copying output failed (try %d), retrying in %.2f s: %s",
                    execution.run_id,
                    backoff.failures,
                    wait,
                    exc,
                )
                continue
            failures, spent = backoff.succeeded()
            if failures:
                logger.info(
                    "run %s: output copied again after %d failed tries over %.1f s",
                    execution.run_id,
                    failures,
                    spent,
                )
            # A slow copy means a busy database: copy less often, so that
            # heartbeats wait less for SQLite's write lock.
            wait = min(max(interval, time.monotonic() - started), retry.MAX_DELAY)

    def copy(self, final=False):
        execution = self.execution
        execution.find_playbook_process()
        self.offset = output.copy_new_output(
            execution.run_id,
            execution.run_artifact_dir,
            self.offset,
            redact=execution.redact,
            final=final,
            attempt=execution.attempt,
        )

    def flush(self):
        """Copy the last output, retrying through a database outage (FLUSH_TIMEOUT)."""
        try:
            retry.write(
                self.execution.run_id,
                "copying the last output",
                self.copy,
                final=True,
                timeout=FLUSH_TIMEOUT,
            )
        except Exception:
            logger.exception(
                "run %s: the last output could not be copied; whoever ends the "
                "run copies it from %s",
                self.execution.run_id,
                self.execution.run_artifact_dir,
            )

    def stop(self):
        if self.is_alive():
            self.stopping.set()
            self.join(timeout=FLUSH_TIMEOUT + 5)


class Heartbeat(threading.Thread):
    """Writes the run's heartbeat and progress, and watches for lost ownership.

    Its own thread and database session, so only the database itself can
    delay a heartbeat. A failed write is retried with backoff, never more
    than HEARTBEAT_INTERVAL apart, until the execution ends.
    """

    def __init__(self, execution):
        super().__init__(name=f"heartbeat-{execution.run_id}", daemon=True)
        self.execution = execution
        self.app = current_app._get_current_object()
        self.stopping = threading.Event()

    def run(self):
        with self.app.app_context():
            try:
                self.loop()
            finally:
                db.session.remove()

    def loop(self):
        execution = self.execution
        beat_every = execution.config["HEARTBEAT_INTERVAL"]
        tick = min(PROGRESS_INTERVAL, beat_every)
        backoff = retry.Backoff(maximum=beat_every)
        next_beat = 0.0
        wait = 0.0
        while True:
            asleep = time.monotonic()
            if self.stopping.wait(wait):
                return
            now = time.monotonic()
            late = now - asleep - wait
            if late > beat_every:
                logger.warning(
                    "run %s: heartbeat thread woke %.1f s late; the work horse is short of CPU",
                    execution.run_id,
                    late,
                )
            # Progress goes out with a heartbeat, at most once a tick.
            if now < next_beat and not execution.progress.changed():
                wait = tick
                continue
            try:
                self.beat()
            except Exception as exc:
                retry.rollback()
                wait = backoff.failed()
                log = logger.exception if backoff.failures == 1 else logger.warning
                log(
                    "run %s: heartbeat failed (try %d), retrying in %.2f s: %s",
                    execution.run_id,
                    backoff.failures,
                    wait,
                    exc,
                )
                continue
            failures, spent = backoff.succeeded()
            if failures:
                logger.info(
                    "run %s: heartbeat written again after %d failed tries over %.1f s",
                    execution.run_id,
                    failures,
                    spent,
                )
            next_beat = now + beat_every
            wait = tick

    def beat(self):
        execution = self.execution
        progress = execution.progress.snapshot_if_changed()
        started = time.monotonic()
        owned = state.heartbeat(execution.run_id, execution.attempt, progress)
        took = time.monotonic() - started
        if took > execution.config["HEARTBEAT_INTERVAL"]:
            logger.warning(
                "run %s: writing the heartbeat took %.1f s; the database is slow or locked",
                execution.run_id,
                took,
            )
        if owned:
            return
        if not execution.lost_ownership.is_set():
            logger.warning(
                "run %s: attempt %s no longer owns the run; stopping the playbook",
                execution.run_id,
                execution.attempt,
            )
            execution.lost_ownership.set()
            process.signal_leader(execution.pid, execution.pid_started)

    def stop(self):
        if self.is_alive():
            self.stopping.set()
            self.join(timeout=10)


def _stats_from_runner(runner):
    try:
        return stats_from_event(runner.stats or {})
    except Exception:
        return {}
