"""Make time.sleep work under libfaketime for processes the tests start skewed.

With FAKETIME_DONT_FAKE_MONOTONIC=1, libfaketime 0.9.10 (Debian 12) makes
CPython's time.sleep, which calls clock_nanosleep on an absolute monotonic
deadline, fail with EINVAL. A timed wait on an event sleeps the same time
without that call. Only processes whose PYTHONPATH names this folder load it.
"""

import threading
import time


def _sleep(seconds):
    if seconds > 0:
        threading.Event().wait(seconds)


time.sleep = _sleep
