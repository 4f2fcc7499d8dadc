"""Redis connections and the RQ queue, built from the application's config."""

from redis import Redis
from rq import Queue, Worker


def connect(url):
    """Return a Redis client for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
    return Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)


def get_queue(config, connection=None):
    """Return the RQ queue that carries playbook runs."""
    connection = connection or connect(config["REDIS_URL"])
    return Queue(config["QUEUE_NAME"], connection=connection)


def get_notify_queue(config, connection=None):
    """Return the RQ queue that carries notification deliveries (jobs.notify)."""
    connection = connection or connect(config["REDIS_URL"])
    return Queue(f"{config['QUEUE_NAME']}-notify", connection=connection)


def count_workers(connection):
    """Return how many RQ workers are registered and alive.

    Worker.count reads RQ's set of worker keys, which keeps a worker killed
    with SIGKILL until some worker cleans it. Worker.all drops the entries
    whose key has expired (after WORKER_TTL seconds without a heartbeat).
    """
    return len(Worker.all(connection=connection))
