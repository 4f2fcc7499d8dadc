"""gunicorn settings for Shepherd's web process (the Procfile's ``web``).

Threads serve the live output streams, which stay open while a run lasts.
"""

import os

bind = os.environ.get("SHEPHERD_BIND", "127.0.0.1:5000")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "16"))
accesslog = "-"
# Event streams close themselves every few minutes; keep them out of reach
# of the worker timeout, which gthread applies per worker, not per request.
timeout = 60
graceful_timeout = 10


def when_ready(server):
    """Check the run history once when the web server starts."""
    from webapp import create_app
    from webapp.startup import reconcile

    reconcile(create_app())
