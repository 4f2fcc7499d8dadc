"""Signing in, launching and signing out in headless Chromium, under the
content security policy."""

import threading

import pytest
from conftest import login
from werkzeug.serving import make_server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def base_url(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        # Chromium reports content security policy violations as console
        # errors starting with "Refused to".
        page.csp_errors = []
        page.on(
            "console",
            lambda message: "Refused to" in message.text
            and page.csp_errors.append(message.text),
        )
        yield page
        browser.close()


def test_sign_in_launch_cancel_sign_out(app, base_url, browser_page):
    page = browser_page
    page.goto(f"{base_url}/runs")
    assert page.url.startswith(f"{base_url}/login")
    assert page.locator("#user-menu").count() == 0

    login(page, base_url, app=app)
    assert "admin (admin)" in page.inner_text("#user-menu")

    page.goto(f"{base_url}/launch")
    page.select_option("#playbook", "ping.yml")
    page.select_option("#target", "localhost")
    page.fill("#extra_vars", "api_token: tok-98765\nnote: <b>bold</b>")
    page.click("#launch-button")
    page.wait_for_selector("#run")
    assert "/runs/" in page.url
    assert "tok-98765" not in page.content()
    assert "<b>bold</b>" in page.inner_text("#extra-vars")

    page.click("#cancel-button")
    page.wait_for_selector("[data-status='canceled']")

    page.click("#logout-button")
    page.wait_for_selector("#login-form")
    page.goto(f"{base_url}/runs")
    assert page.url.startswith(f"{base_url}/login")
    assert page.csp_errors == []


def test_admin_creates_user_who_signs_in(app, base_url, browser_page):
    page = browser_page
    login(page, base_url, app=app)

    page.click("#nav a[href='/users']")
    page.wait_for_selector("#new-user-form")
    page.fill("#new-name", "carol")
    page.select_option("#new-role", "operator")
    page.click("#create-user")
    password = page.inner_text("#secret")
    page.click("#logout-button")
    page.wait_for_selector("#login-form")
    login(page, base_url, name="carol", password=password)

    assert "carol (operator)" in page.inner_text("#user-menu")
    assert page.locator("#nav a[href='/users']").count() == 0
    response = page.goto(f"{base_url}/users")
    assert response.status == 403
    assert "needs the admin role" in page.inner_text("#error-description")
    assert page.csp_errors == []
