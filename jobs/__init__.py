"""RQ job functions and the process control around them.

Modules here take run ids, never ORM objects, and build no application at
import: the entry points (worker.py, scheduler.py, the web app) push an
application context before any job or handler runs.
"""
