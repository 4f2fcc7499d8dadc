"""The pages in headless Chromium: live badges, live output, cancel, stuck runs, charts.

The app is served on 127.0.0.1 by a threaded werkzeug server inside the test
process, with real worker processes beside it. Each test saves screenshots
into test-artifacts/. These tests fail, never skip, when Chromium is missing.
"""

import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import free_port, launch, login, run_processes, wait_for, wait_status
from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

from webapp.extensions import db
from webapp.models import Deployment, OutputChunk, utcnow

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# Milliseconds Playwright waits for a page condition before failing.
EXPECT_TIMEOUT = 60_000
expect.set_options(timeout=EXPECT_TIMEOUT)

# Records every status the run page's badge shows, and marks the document so
# a test can tell that the page was never reloaded.
RECORD_STATUSES = """
window.__loadedOnce = Math.random();
window.__statuses = [];
document.addEventListener("DOMContentLoaded", function () {
  const box = document.getElementById("run-status");
  if (!box) return;
  const record = function () {
    const badge = box.querySelector("[data-status]");
    const status = badge && badge.dataset.status;
    if (status && window.__statuses[window.__statuses.length - 1] !== status) {
      window.__statuses.push(status);
    }
  };
  record();
  new MutationObserver(record).observe(box, {childList: true, subtree: true});
});
"""


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: the browser tests need Debian's "
            "chromium package. Install it with `sudo bash .ci/system-packages` "
            "(make install-test runs it)."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def live_server(app):
    """Serve the test's app on a free loopback port; yield its base URL."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server")
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def page(browser, live_server, app):
    """A fresh browser page on the live server, signed in as an admin."""
    context = browser.new_context(
        base_url=live_server, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(EXPECT_TIMEOUT)
    page = context.new_page()
    page.add_init_script(RECORD_STATUSES)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    login(page, app=app)
    yield page
    context.close()


def screenshot(page, name, full_page=True):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def assert_no_inline_script(page):
    """The pages must work under a content security policy without 'unsafe-inline'."""
    inline = page.eval_on_selector_all("script:not([src])", "els => els.length")
    assert inline == 0
    handlers = page.evaluate(
        """() => [...document.querySelectorAll('*')].flatMap(
            el => [...el.attributes].filter(a => a.name.startsWith('on')).map(a => a.name))"""
    )
    assert handlers == []
    styled = page.eval_on_selector_all("body [style]:not(canvas)", "els => els.length")
    assert styled == 0


def add_run(app, **fields):
    """Write a run row directly, the way a worker would have left it."""
    with app.app_context():
        run = Deployment(playbook="ping.yml", target="localhost", timeout=120, **fields)
        db.session.add(run)
        db.session.commit()
        return run.id


def test_launch_badge_goes_queued_running_successful(page, client, processes):
    page.goto("/launch")
    page.select_option("#playbook", "ping.yml")
    page.select_option("#target", "localhost")
    assert_no_inline_script(page)
    screenshot(page, "launch")
    page.click("#launch-button")

    page.wait_for_url("**/runs/**")
    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "queued"
    )
    expect(page.locator("[data-rq-state]")).to_contain_text("queued")
    loaded_once = page.evaluate("window.__loadedOnce")
    processes.worker()

    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "successful", timeout=90_000
    )
    statuses = page.evaluate("window.__statuses")
    assert statuses == ["queued", "running", "successful"]
    assert page.evaluate("window.__loadedOnce") == loaded_once
    expect(page.locator("#output")).to_contain_text("PLAY RECAP")
    expect(page.locator("#stats tbody tr")).to_have_count(1)
    expect(page.locator("#toasts")).to_contain_text("ended: successful")
    expect(page.locator("#cancel-button")).to_have_count(0)
    expect(page.locator("[data-rq-state]")).to_have_count(0)
    assert_no_inline_script(page)
    assert page.js_errors == []
    screenshot(page, "run-successful")

    first_url = page.url
    page.click("#relaunch-button")
    page.wait_for_url(lambda url: url != first_url and "/runs/" in url)
    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "successful", timeout=90_000
    )
    expect(page.locator("#run")).to_contain_text("Relaunch of")

    page.goto("/runs")
    row = page.locator("#history tbody tr").first
    expect(row.locator("[data-status]").first).to_have_attribute(
        "data-status", "successful"
    )
    assert_no_inline_script(page)
    screenshot(page, "history")


def test_history_row_updates_without_reload(page, client, processes):
    processes.worker()
    run = launch(client, "slow.yml", "localhost", extra_vars={"steps": 4, "pause": 1})

    page.goto("/runs")
    loaded_once = page.evaluate("window.__loadedOnce")
    row = page.locator(f'#history tr[data-run="{run["id"]}"]')
    expect(row).to_have_attribute("data-status", "running")
    expect(row).to_contain_text("heartbeat")
    expect(row).to_have_attribute("data-status", "successful", timeout=90_000)

    assert page.evaluate("window.__loadedOnce") == loaded_once
    assert page.js_errors == []


def test_slow_playbook_lines_arrive_live(page, client, processes):
    processes.worker()
    page.goto("/launch")
    page.select_option("#playbook", "slow.yml")
    page.select_option("#target", "localhost")
    page.fill("#extra_vars", "steps: 8\npause: 1")
    page.click("#launch-button")
    page.wait_for_url("**/runs/**")
    run_id = int(page.url.split("/runs/")[1].split("?")[0])

    output = page.locator("#output")
    expect(output).to_contain_text("(item=step 2)")
    assert "(item=step 8)" not in output.inner_text()
    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "running"
    )
    expect(page.locator('[data-progress="task"]')).to_have_text("Count slowly")
    assert output.locator("span[class^='ansi-fg']").count() > 0

    # A second page opened mid-run shows the earlier lines once and the rest live.
    late = page.context.new_page()
    late.goto(f"/runs/{run_id}")
    late_output = late.locator("#output")
    expect(late_output).to_contain_text("(item=step 8)", timeout=90_000)
    expect(late.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "successful"
    )
    expect(late.locator("#run")).to_have_attribute("data-stream", "closed")
    text = late_output.inner_text()
    for step in range(1, 9):
        assert text.count(f"(item=step {step})") == 1, step
    screenshot(late, "run-live-output")
    late.close()

    expect(page.locator("#run")).to_have_attribute("data-stream", "closed")
    assert wait_status(client, run_id, "successful")
    assert page.js_errors == []


def test_cancel_from_run_page(page, client, processes, shepherd_env):
    processes.worker()
    run = launch(client, "sleep.yml", "localhost", extra_vars={"seconds": 120})

    page.goto(f"/runs/{run['id']}")
    expect(page.locator("#output")).to_contain_text("before the sleep")
    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "running"
    )
    page.click("#cancel-button")

    expect(page.locator("#run-status [data-status]")).to_have_attribute(
        "data-status", "canceled"
    )
    expect(page.locator("#cancel-button")).to_have_count(0)
    expect(page.locator("[data-field=reason]")).to_contain_text("canceled by")
    assert wait_status(client, run["id"], "canceled")["status"] == "canceled"
    wait_for(
        lambda: not run_processes(shepherd_env["SHEPHERD_HOSTNAME"], run["id"]),
        30,
        message=f"the playbook processes of run {run['id']} to end",
    )
    screenshot(page, "run-canceled")


def test_stale_heartbeat_shows_stuck_badge(page, app):
    now = utcnow()
    run_id = add_run(
        app,
        status="running",
        started_at=now - timedelta(hours=5.2),
        heartbeat_at=now - timedelta(minutes=30),
        last_output_at=now - timedelta(minutes=31),
        worker_name="gone-worker",
        hostname="gone-host",
        job_id="no-such-job",
    )
    with app.app_context():
        db.session.add(OutputChunk(deployment_id=run_id, text="TASK [Reach]\n"))
        db.session.commit()

    page.goto("/runs")
    badge = page.locator(f'#history tr[data-run="{run_id}"] [data-status="stuck"]')
    expect(badge).to_contain_text("running for 5.2 h")
    badge.focus()
    expect(page.locator(".tooltip")).to_contain_text("stuck: no heartbeat for 3")
    expect(badge.locator(".bi-exclamation-triangle-fill")).to_have_count(1)
    expect(
        page.locator(f'#history tr[data-run="{run_id}"] [data-rq-warning]')
    ).to_have_count(1)
    screenshot(page, "history-stuck")

    page.goto(f"/runs/{run_id}")
    expect(page.locator('#run-status [data-status="stuck"]')).to_contain_text(
        "running for 5.2 h"
    )
    screenshot(page, "run-stuck")

    # On a phone the pages fit the screen's width; wide tables scroll inside.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "run-phone")
    page.goto("/runs")
    expect(badge).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "history-phone")


def test_dashboard_draws_charts(page, app, processes):
    processes.worker()
    now = utcnow()
    for hours_ago, status in [(1, "successful"), (2, "failed"), (30, "successful")]:
        started = now - timedelta(hours=hours_ago)
        add_run(
            app,
            status=status,
            reason=None if status == "successful" else "failed on localhost",
            queued_at=started,
            started_at=started,
            finished_at=started + timedelta(seconds=42),
        )
    add_run(
        app,
        status="running",
        started_at=now - timedelta(hours=3),
        heartbeat_at=now - timedelta(hours=1),
    )

    page.goto("/")
    expect(page.locator("#dashboard")).to_have_attribute("data-loaded", "1")
    for canvas in ("chart-hour", "chart-day", "chart-duration", "chart-os"):
        assert page.evaluate(f"Chart.getChart('{canvas}') !== undefined"), canvas
    assert page.evaluate("Object.keys(Chart.instances).length") == 4
    expect(page.locator('[data-count="workers"]')).to_have_text("1")
    expect(page.locator('[data-count="stuck"]')).to_have_text("1")
    expect(page.locator('[data-alert="stuck"]')).to_have_count(1)
    expect(page.locator('[data-alert="no_scheduler"]')).to_have_count(1)
    expect(page.locator('[data-alert="no_worker"]')).to_have_count(0)
    expect(page.locator("#duration-table tbody")).to_contain_text("ping.yml")
    nav = page.locator("nav .nav-link")
    expect(nav.first).to_have_text("Dashboard")
    labels = [text.strip() for text in nav.all_inner_texts()]
    for label in ("Dashboard", "Launch", "History", "Playbooks", "Targets"):
        assert label in labels
    assert_no_inline_script(page)
    assert page.js_errors == []
    screenshot(page, "dashboard")

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(page.locator("#dashboard")).to_have_attribute("data-loaded", "1")
    screenshot(page, "dashboard-phone")


def test_pages_keyboard_reachable(page):
    page.goto("/playbooks")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Shepherd")
    assert_no_inline_script(page)
    screenshot(page, "playbooks")

    page.goto("/targets")
    expect(page.locator("h1")).to_have_text("Targets")
    assert_no_inline_script(page)
    screenshot(page, "targets")
