"""Several hosts on one Redis and one database, simulated by SHEPHERD_HOSTNAME.

Two workers with different host identities share the queue. Then one host
disappears (worker and work horse SIGKILLed). A scheduler of a third host
ends its run through the stale heartbeat rule and leaves the processes of
other hosts alone.
"""

import os
import signal
import subprocess
import uuid

import psutil
import pytest
from conftest import launch, run_processes, wait_for, wait_status

from jobs import process

FAST = {"HEARTBEAT_INTERVAL": "1", "HEARTBEAT_GRACE": "4", "SWEEP_INTERVAL": "1"}


def host(name):
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.mark.slow
def test_lost_host_run_ended_by_other_host(client, processes):
    host_a, host_b, host_c = host("alpha"), host("bravo"), host("charlie")
    workers = {
        host_a: processes.worker(env={**FAST, "SHEPHERD_HOSTNAME": host_a}),
        host_b: processes.worker(env={**FAST, "SHEPHERD_HOSTNAME": host_b}),
    }
    first = launch(client, "sleep_shared.yml", extra_vars={"seconds": 20})
    second = launch(client, "sleep_shared.yml", extra_vars={"seconds": 20})
    runs = [wait_status(client, r["id"], "running") for r in (first, second)]
    by_host = {run["hostname"]: run for run in runs}
    assert set(by_host) == {host_a, host_b}
    lost, kept = by_host[host_a], by_host[host_b]
    wait_for(lambda: run_processes(host_a, lost["id"]), 30, message="ansible on alpha")
    wait_for(lambda: run_processes(host_b, kept["id"]), 30, message="ansible on bravo")
    assert run_processes(host_a, kept["id"]) == []

    worker = workers[host_a]
    horse = worker.horse_pid()
    assert horse is not None
    worker.send(signal.SIGKILL)
    psutil.Process(horse).kill()
    # A process left behind on alpha (the real ones die with the horse's pty).
    leftover = subprocess.Popen(
        ["sleep", "120"],
        env={
            **os.environ,
            process.MARKER: process.marker_value(host_a, lost["id"], lost["attempt"]),
        },
    )
    wait_for(lambda: run_processes(host_a, lost["id"]), 10, message="the leftover")
    processes.scheduler(env={**FAST, "SHEPHERD_HOSTNAME": host_c})

    ended = wait_status(client, lost["id"], "abandoned", timeout=60)
    assert ended["reason_code"] == "stale_heartbeat"
    assert ended["verdict"]["decided_by"] == "sweep"
    assert ended["verdict"]["evidence"]["host"] == host_a
    assert host_a in ended["reason"]
    # The sweep ran on charlie, so alpha's processes were left to alpha.
    assert leftover.poll() is None
    assert wait_status(client, kept["id"], "successful", timeout=90)["hostname"] == (
        host_b
    )

    processes.worker(env={**FAST, "SHEPHERD_HOSTNAME": host_a})
    wait_for(
        lambda: not run_processes(host_a, lost["id"]),
        30,
        message="the restarted alpha worker to kill its leftover",
    )
    assert leftover.wait(10) is not None
