"""Logging set up once per entry point: one line per record on standard output."""

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def configure(level=None):
    """Send log records to stdout; LOG_LEVEL sets the level (default INFO)."""
    root = logging.getLogger()
    if getattr(configure, "done", False):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO").upper())
    configure.done = True
