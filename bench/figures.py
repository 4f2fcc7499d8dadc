"""The measurements on a live stack: overhead, dispatch, throughput, faults, output, memory.

Each function drives the stack through its HTTP API and real processes and
returns a JSON-ready dict of raw figures. Runs that no fault touches are
recorded in ``tracker`` so that the report can count false verdicts.
"""

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import psutil
import requests
from stack import TERMINAL, TRIVIAL, BenchError, wait_for
from stats import summary

MARK = re.compile(r"bench-mark (\d+\.\d+)")
TAG = re.compile(r"<[^>]+>")


def _timestamp(iso):
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _launch_one(stack, playbook=TRIVIAL, **fields):
    """Launch one run; return it with ``_launched`` and ``_created`` client times."""
    session = stack.new_session()
    launched = time.time()
    run = stack.launch(playbook, session=session, **fields)
    run.update(_launched=launched, _created=time.time())
    session.close()
    return run


def shepherd_batch(stack, count, tracker, interval=0.05):
    """Launch ``count`` runs at once; return (seconds until all ended, runs).

    One poll of the active runs every ``interval`` seconds watches the whole
    batch, as a history page would, so that the client's own requests take
    little of the CPU the runs need. Each run gains ``_launched`` (client
    time before its POST), ``_created`` (when the POST returned) and
    ``_seen`` (the first poll that found it ended).
    """
    with ThreadPoolExecutor(count) as pool:
        launched = list(pool.map(lambda _: _launch_one(stack), range(count)))
    waiting = {run["id"] for run in launched}
    seen = {}
    deadline = time.monotonic() + 300
    while waiting:
        if time.monotonic() > deadline:
            raise BenchError(f"runs {sorted(waiting)} still active after 300 s")
        time.sleep(interval)
        now = time.time()
        for run_id in waiting - stack.active_ids():
            seen[run_id] = now
        waiting -= set(seen)
    runs = []
    for run in launched:
        done = stack.get_run(run["id"])
        if done["status"] not in TERMINAL:
            raise BenchError(
                f"run {run['id']} left the active list as {done['status']}"
            )
        done.update(
            _launched=run["_launched"], _created=run["_created"], _seen=seen[run["id"]]
        )
        runs.append(done)
        tracker.append(run["id"])
    first = min(run["_launched"] for run in runs)
    last = max(run["_seen"] for run in runs)
    return last - first, runs


def bare_batch(stack, count, playbook=TRIVIAL):
    """Run ``count`` bare ansible-playbook processes at once; return seconds."""
    logs = [open(os.devnull, "wb") for _ in range(count)]
    started = time.time()
    procs = [
        subprocess.Popen(
            stack.bare_command(playbook),
            env=stack._process_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    codes = [proc.wait() for proc in procs]
    elapsed = time.time() - started
    for log in logs:
        log.close()
    if any(codes):
        raise BenchError(f"bare ansible-playbook failed with return codes {codes}")
    return elapsed


RUNNER_SCRIPT = """
import json, sys, time
import ansible_runner
options = json.loads(sys.argv[1])
started = time.time()
result = ansible_runner.run(**options)
print(json.dumps({"seconds": time.time() - started, "rc": result.rc}))
"""


def runner_alone(stack, index, playbook=TRIVIAL):
    """Time ``ansible_runner.run`` alone, inside its own process; return seconds.

    Uses Shepherd's runner settings (quiet, pexpect timeout) without its
    prompt-guard callback and wrapper. Python's start-up and imports are
    not counted, because a worker has done them before its first job.
    """
    private_dir = stack.dir / "runner" / str(index)
    private_dir.mkdir(parents=True, exist_ok=True)
    options = {
        "private_data_dir": str(private_dir),
        "project_dir": str(stack.playbook_dir),
        "playbook": playbook,
        "inventory": str(stack.inventory),
        "limit": "localhost",
        "quiet": True,
        "settings": {"suppress_ansible_output": True, "pexpect_timeout": 1},
    }
    result = subprocess.run(
        [sys.executable, "-c", RUNNER_SCRIPT, json.dumps(options)],
        env=stack._process_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    if outcome["rc"] != 0:
        raise BenchError(f"ansible-runner alone failed: {result.stdout[-2000:]}")
    return outcome["seconds"]


def phases_ms(run):
    """Split a run's time as the client saw it into its phases, in ms.

    launch_request: the POST until its response. dispatch: the POST until
    the run's started_at (written by the work horse). execution: started_at
    to finished_at. visible: finished_at until the client read the status.
    """
    queued = _timestamp(run["queued_at"])
    started = _timestamp(run["started_at"])
    finished = _timestamp(run["finished_at"])
    if started is None or finished is None:
        return None
    return {
        "launch_request": round((run["_created"] - run["_launched"]) * 1000, 1),
        "dispatch": round((started - run["_launched"]) * 1000, 1),
        "queued_to_started": round((started - queued) * 1000, 1),
        "execution": round((finished - started) * 1000, 1),
        "visible": round((run["_seen"] - finished) * 1000, 1),
    }


def _reaped_cpu():
    """Return the CPU time of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Seconds to let work horses exit and be reaped after their runs have ended,
# so that their CPU time is counted with the batch that used it.
REAP_SETTLE = 0.3


def _with_cpu(clock, function, *args):
    """Call ``function``; return its results followed by the CPU seconds ``clock`` saw."""
    before = clock()
    result = function(*args)
    time.sleep(REAP_SETTLE)
    used = clock() - before
    if isinstance(result, tuple):
        return (*result, used)
    return result, used


def overhead(stack, workers, concurrency, pairs, tracker):
    """Alternate batches of Shepherd runs and bare runs; compare them pair by pair.

    The order inside a pair flips every pair, so a trend in the machine's
    load weighs on both sides alike.
    """
    stack.set_workers(workers)
    shepherd_batch(stack, concurrency, tracker)  # warm up caches and connections
    bare_batch(stack, concurrency)
    rows, phases = [], []
    for index in range(pairs):
        if index % 2 == 0:
            shepherd, runs, shepherd_cpu = _with_cpu(
                stack.cpu_seconds, shepherd_batch, stack, concurrency, tracker
            )
            bare, bare_cpu = _with_cpu(_reaped_cpu, bare_batch, stack, concurrency)
        else:
            bare, bare_cpu = _with_cpu(_reaped_cpu, bare_batch, stack, concurrency)
            shepherd, runs, shepherd_cpu = _with_cpu(
                stack.cpu_seconds, shepherd_batch, stack, concurrency, tracker
            )
        phases += [p for p in map(phases_ms, runs) if p]
        rows.append(
            {
                "shepherd_s": round(shepherd, 4),
                "bare_s": round(bare, 4),
                "ratio": round(shepherd / bare, 4),
                "shepherd_cpu_per_run_s": round(shepherd_cpu / concurrency, 4),
                "bare_cpu_per_run_s": round(bare_cpu / concurrency, 4),
                "statuses": [run["status"] for run in runs],
            }
        )
        if concurrency == 1:
            rows[-1]["runner_alone_s"] = round(runner_alone(stack, index), 4)
    return {
        "workers": workers,
        "concurrency": concurrency,
        "pairs": rows,
        "ratio": summary([row["ratio"] for row in rows]),
        "shepherd_s": summary([row["shepherd_s"] for row in rows]),
        "bare_s": summary([row["bare_s"] for row in rows]),
        "runner_alone_s": summary([row.get("runner_alone_s") for row in rows]),
        "shepherd_cpu_per_run_s": summary(
            [row["shepherd_cpu_per_run_s"] for row in rows], 3
        ),
        "bare_cpu_per_run_s": summary([row["bare_cpu_per_run_s"] for row in rows], 3),
        "dispatch_ms": [p["dispatch"] for p in phases],
        "phases_ms": {
            name: summary([p[name] for p in phases], 1)
            for name in (phases[0] if phases else {})
        },
    }


def throughput(stack, runs, block, tracker):
    """Run ``runs`` trivial runs on 4 workers and as many bare runs 4 at a time.

    Both sides go in alternating blocks of ``block`` runs; the ratio of a
    pair is Shepherd's runs per second over bare runs per second.
    """
    stack.set_workers(4)
    rows = []
    for index in range(max(1, runs // block)):
        if index % 2 == 0:
            shepherd = _shepherd_block(stack, block, tracker)
            bare = _bare_block(stack, block)
        else:
            bare = _bare_block(stack, block)
            shepherd = _shepherd_block(stack, block, tracker)
        rows.append(
            {
                "runs": block,
                "shepherd_s": round(shepherd, 3),
                "bare_s": round(bare, 3),
                "ratio": round(bare / shepherd, 4),
            }
        )
    shepherd_total = sum(row["shepherd_s"] for row in rows)
    bare_total = sum(row["bare_s"] for row in rows)
    total = sum(row["runs"] for row in rows)
    return {
        "runs": total,
        "block": block,
        "blocks": rows,
        "ratio": summary([row["ratio"] for row in rows]),
        "shepherd_runs_per_s": round(total / shepherd_total, 3),
        "bare_runs_per_s": round(total / bare_total, 3),
        "overall_ratio": round(bare_total / shepherd_total, 4),
    }


def _shepherd_block(stack, count, tracker):
    started = time.time()
    ids = {stack.launch(TRIVIAL)["id"] for _ in range(count)}
    tracker.extend(ids)
    wait_for(
        lambda: not (ids & stack.active_ids()),
        count * 60,
        0.1,
        f"{count} runs to end",
    )
    return time.time() - started


def _bare_block(stack, count):
    def one(_):
        return subprocess.run(
            stack.bare_command(),
            env=stack._process_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        ).returncode

    started = time.time()
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(one, range(count)))
    if any(codes):
        raise BenchError(f"bare ansible-playbook failed with return codes {codes}")
    return time.time() - started


# Convergence: time from a fault to the run's terminal status.


def _sleeping_run(stack, **fields):
    run = stack.launch("sleep.yml", extra_vars={"seconds": 120}, **fields)
    run, _ = stack.wait_status(run["id"], {"running"}, timeout=60)
    return run


def _horse_of(worker):
    return wait_for(
        lambda: next(iter(worker.children()), None), 30, 0.05, "the work horse"
    ).pid


def converge_horse_kill(stack):
    stack.set_workers(1)
    run = _sleeping_run(stack)
    horse = _horse_of(stack.workers[0])
    time.sleep(0.5)
    fault = time.time()
    os.kill(horse, signal.SIGKILL)
    done, seen = stack.wait_terminal(run["id"], timeout=60)
    return _convergence(done, seen - fault, "abandoned")


def converge_worker_kill(stack):
    stack.set_workers(1)
    worker = stack.workers[0]
    run = _sleeping_run(stack)
    horse = _horse_of(worker)
    time.sleep(0.5)
    fault = time.time()
    os.kill(worker.pid, signal.SIGKILL)
    os.kill(horse, signal.SIGKILL)
    done, seen = stack.wait_terminal(run["id"], timeout=90)
    worker.popen.wait(10)
    worker.log.close()
    stack.workers.remove(worker)
    return _convergence(done, seen - fault, "abandoned")


def converge_timeout(stack, limit=3):
    stack.set_workers(1)
    run = stack.launch("sleep.yml", extra_vars={"seconds": 120}, timeout=limit)
    done, seen = stack.wait_terminal(run["id"], timeout=120)
    started = _timestamp(done["started_at"])
    return _convergence(done, seen - (started + limit), "timeout")


def converge_cancel(stack):
    stack.set_workers(1)
    run = _sleeping_run(stack)
    time.sleep(1.0)
    request = time.time()
    response = stack.session.post(
        f"{stack.url}/api/deployments/{run['id']}/cancel", timeout=30
    )
    response.raise_for_status()
    done, seen = stack.wait_terminal(run["id"], timeout=60)
    wait_for(lambda: not stack.run_marked(run["id"]), 60, 0.05, "processes to exit")
    result = _convergence(done, seen - request, "canceled")
    result["processes_gone_s"] = round(time.time() - request, 3)
    return result


def _convergence(run, seconds, expected):
    return {
        "run": run["id"],
        "seconds": round(seconds, 3),
        "status": run["status"],
        "expected": expected,
        "reason_code": run["reason_code"],
    }


def convergence(stack, repeats):
    """Measure every fault ``repeats`` times, with the scheduler's sweep running."""
    cases = {
        "horse_kill": converge_horse_kill,
        "worker_kill": converge_worker_kill,
        "timeout": converge_timeout,
        "cancel": converge_cancel,
    }
    result = {}
    for name, measure in cases.items():
        samples = [measure(stack) for _ in range(repeats)]
        result[name] = {
            "samples": samples,
            "seconds": summary([s["seconds"] for s in samples], 3),
            "wrong_status": sum(s["status"] != s["expected"] for s in samples),
        }
    stack.set_workers(1)
    return result


# Live output: a stamped line printed by Ansible until an SSE client has it.


def live_output(stack, repeats, lines, tracker):
    stack.set_workers(1)
    latencies = []
    for _ in range(repeats):
        run = stack.launch("live.yml", extra_vars={"lines": lines})
        tracker.append(run["id"])
        latencies += _stream_latencies(stack, run["id"])
        stack.wait_terminal(run["id"])
    return {
        "runs": repeats,
        "lines_per_run": lines,
        "latency_ms": summary([value * 1000 for value in latencies], 1),
        "lines_received": len(latencies),
    }


def _stream_latencies(stack, run_id):
    latencies = []
    with requests.get(
        f"{stack.url}/runs/{run_id}/events",
        headers=stack.headers,
        stream=True,
        timeout=120,
    ) as response:
        response.raise_for_status()
        event = None
        for line in response.iter_lines(chunk_size=None, decode_unicode=True):
            received = time.time()
            if line.startswith("event: "):
                event = line[len("event: ") :]
                if event == "end":
                    break
            elif line.startswith("data: ") and event == "output":
                html = json.loads(line[len("data: ") :])["html"]
                for stamp in MARK.findall(TAG.sub("", html)):
                    latencies.append(received - float(stamp))
    return latencies


# Memory


def worker_memory(stack, items, tracker):
    """Sample the memory of the worker and its work horse while a run prints a lot."""
    stack.set_workers(1)
    worker = psutil.Process(stack.workers[0].pid)
    peaks = {"worker_and_horse": 0, "worker_and_horse_rss": 0, "ansible": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                ours = [worker, *worker.children()]
                ansible = [c for p in ours[1:] for c in p.children(recursive=True)]
                # The horse is a fork of the worker and shares most of its
                # pages, so summed RSS counts them twice; PSS splits them.
                full = [p.memory_full_info() for p in ours]
                for key, value in (
                    ("worker_and_horse", sum(m.pss for m in full)),
                    ("worker_and_horse_rss", sum(m.rss for m in full)),
                    ("ansible", sum(p.memory_full_info().pss for p in ansible)),
                ):
                    peaks[key] = max(peaks[key], value)
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.time()
    run = stack.launch("output.yml", extra_vars={"items": items})
    tracker.append(run["id"])
    finished, seen = stack.wait_terminal(run["id"], timeout=1800, interval=0.5)
    done.set()
    sampler.join()
    return {
        "output_mb": round(stack.output_bytes(run["id"]) / 2**20, 1),
        "status": finished["status"],
        "run_s": round(seen - started, 2),
        "worker_peak_mb": round(peaks["worker_and_horse"] / 2**20, 1),
        "worker_peak_rss_sum_mb": round(peaks["worker_and_horse_rss"] / 2**20, 1),
        "ansible_peak_mb": round(peaks["ansible"] / 2**20, 1),
    }


def web_memory(stack):
    """Return the RSS of gunicorn's master and workers, in MB."""
    master = psutil.Process(stack.web.pid)
    processes = [master, *master.children(recursive=True)]
    return {
        "web_rss_mb": round(sum(p.memory_info().rss for p in processes) / 2**20, 1),
        "processes": len(processes),
    }
