"""Redis URLs: the forms documented in docs/operations.md build the right client."""

import pytest
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection

from webapp.redis_conn import connect, get_notify_queue, get_queue


@pytest.mark.parametrize(
    ("url", "connection_class", "expected"),
    [
        ("redis://127.0.0.1:6379/1", Connection, {"host": "127.0.0.1", "db": 1}),
        (
            "rediss://:secret@127.0.0.1:6380/2?ssl_cert_reqs=required"
            "&ssl_ca_certs=/etc/ssl/ca.pem",
            SSLConnection,
            {
                "port": 6380,
                "db": 2,
                "password": "secret",
                "ssl_cert_reqs": "required",
                "ssl_ca_certs": "/etc/ssl/ca.pem",
            },
        ),
        (
            "unix:///run/redis/redis.sock?db=3",
            UnixDomainSocketConnection,
            {"path": "/run/redis/redis.sock", "db": 3},
        ),
    ],
)
def test_connect_url_forms(url, connection_class, expected):
    client = connect(url)

    pool = client.connection_pool
    assert pool.connection_class is connection_class
    for key, value in expected.items():
        assert pool.connection_kwargs[key] == value


def test_queues_share_connection(redis_server):
    config = {"REDIS_URL": redis_server.url, "QUEUE_NAME": "ops"}
    connection = connect(config["REDIS_URL"])

    assert get_queue(config, connection).name == "ops"
    assert get_notify_queue(config, connection).name == "ops-notify"
    assert get_queue(config, connection).connection.ping()
