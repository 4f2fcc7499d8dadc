"""Host-local process control for Ansible runs.

Every process of a run carries the environment variable ``SHEPHERD_RUN`` set
to ``<host>/<run id>/<attempt>``. Ansible's worker processes start their own
sessions, so process groups do not reach them, but they inherit the
environment, so the marker finds every one of them, even after reparenting.
A host only ever signals processes whose marker names that host, and checks
a recorded PID's start time first so that a reused PID is never hit.
"""

import logging
import os
import signal
import time

import psutil

logger = logging.getLogger(__name__)

MARKER = "SHEPHERD_RUN"
# ansible-playbook forwards SIGTERM to its workers; those get this long to exit
# before everything left is sent SIGKILL.
TERM_GRACE = 2.0


def marker_value(hostname, run_id, attempt):
    return f"{hostname}/{run_id}/{attempt}"


def parse_marker(value):
    """Return (hostname, run_id, attempt) or None for a malformed value."""
    try:
        hostname, run_id, attempt = value.rsplit("/", 2)
        return hostname, int(run_id), int(attempt)
    except ValueError:
        return None


def start_time(pid):
    """Return the start time of ``pid`` (seconds since the epoch) or None."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_same_process(pid, started):
    """Return True when ``pid`` is alive and started at ``started``."""
    # NOTE: psutil derives start times from the boot time that the kernel
    # computes from the wall clock, so a clock step between the record and
    # this check can make a live horse look gone (and its run abandoned).
    if not pid or started is None:
        return False
    current = start_time(pid)
    return current is not None and abs(current - started) < 0.05


def marked_processes(hostname):
    """Yield (process, run_id, attempt) for every process marked for ``hostname``."""
    for process in psutil.process_iter():
        try:
            value = process.environ().get(MARKER)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if not value:
            continue
        parsed = parse_marker(value)
        if parsed and parsed[0] == hostname:
            yield process, parsed[1], parsed[2]


def kill_run(hostname, run_id, pid=None, pid_started=None, attempt=None):
    """Kill every process of a run on this host and return how many were signalled.

    SIGTERM goes to ansible-playbook first, because Ansible stops its own
    workers on it; whatever is left after TERM_GRACE seconds gets SIGKILL.
    Safe to call twice and when nothing is left.
    """
    victims = [
        process
        for process, marked_run, marked_attempt in marked_processes(hostname)
        if marked_run == run_id and (attempt is None or marked_attempt == attempt)
    ]
    if pid and is_same_process(pid, pid_started):
        try:
            leader = psutil.Process(pid)
            if leader not in victims:
                victims.insert(0, leader)
        except psutil.NoSuchProcess:
            pass
    if not victims:
        return 0

    for process in victims:
        _send(process, signal.SIGTERM)
    _, alive = psutil.wait_procs(victims, timeout=TERM_GRACE)
    for process in alive:
        _send(process, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=1.0)
    logger.warning(
        "run %s: killed %d process(es) on host %s: %s",
        run_id,
        len(victims),
        hostname,
        ", ".join(str(p.pid) for p in victims),
    )
    return len(victims)


def _send(process, sig):
    try:
        process.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def signal_leader(pid, pid_started, sig=signal.SIGTERM):
    """Send ``sig`` to ansible-playbook if it is still the recorded process."""
    if is_same_process(pid, pid_started):
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False
    return False


def wait_gone(hostname, run_id, timeout=5.0):
    """Wait until no process of the run is left; return True when none is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(r == run_id for _, r, _ in marked_processes(hostname)):
            return True
        time.sleep(0.1)
    return False
