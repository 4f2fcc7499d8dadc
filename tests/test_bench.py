"""The benchmark script in quick mode: every figure reaches the JSON and the page.

Times are never asserted: the machine running the tests is shared and slow.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

# These load the whole machine or measure time: they run alone (make test).
pytestmark = pytest.mark.serial

FIGURES = [
    "overhead_1",
    "overhead_4",
    "dispatch",
    "convergence_horse_kill",
    "convergence_worker_kill",
    "convergence_timeout",
    "convergence_cancel",
    "history_first_page",
    "history_deep_page",
    "history_filtered_page",
    "run_page",
    "dashboard",
    "api_list",
    "sweep_stale",
    "sweep_scaling",
    "live_output",
    "throughput",
    "memory_worker",
    "memory_web",
    "false_verdicts",
]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "BENCH_DATABASE_URL"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--output-dir",
            str(output_dir),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    document = json.loads((output_dir / "benchmarks.json").read_text())
    page = (output_dir / "benchmarks.md").read_text()
    return document, page


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_run_reports_every_figure(quick_report):
    document, page = quick_report

    for key in FIGURES:
        assert key in document["figures"], key
        figure = document["figures"][key]
        assert figure["result"], key
        assert f"| {figure['figure']} |" in page, key


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_run_records_machine_and_versions(quick_report):
    document, page = quick_report

    assert document["mode"] == "quick"
    assert document["machine"]["cores"] >= 1
    assert document["machine"]["memory_gb"] > 0
    for name in ("python", "ansible-core", "ansible-runner", "rq", "redis-server"):
        assert document["versions"][name], name
    assert document["date"]
    assert "## Method" in page
    assert "load average" in page


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_run_keeps_spread_and_pairs(quick_report):
    document, _ = quick_report
    raw = document["raw"]

    for key in ("overhead_1", "overhead_4"):
        assert raw[key]["pairs"], key
        assert set(raw[key]["ratio"]) == {"n", "p50", "p95", "min", "max"}
    assert raw["throughput"]["blocks"]
    assert raw["live_output"]["lines_received"] > 0
    assert raw["false_verdicts"]["runs"] > 0
    for case in ("horse_kill", "worker_kill", "timeout", "cancel"):
        assert raw["convergence"][case]["samples"], case
    assert raw["sweep_stale"]["profile"]
