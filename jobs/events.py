"""Play, task and per-host progress built from ansible-runner's events.

The work horse feeds events to a Progress as they arrive. ansible-runner also
writes each event to ``<artifact_dir>/job_events/<counter>-<uuid>.json``, so
a finalizer on the same host can rebuild the progress of a run whose horse
died before it could report it.
"""

import json
import logging
import os
import threading

logger = logging.getLogger(__name__)


class Progress:
    """Play, task and per-host progress built from ansible-runner's events."""

    def __init__(self):
        self.lock = threading.Lock()
        self.play = None
        self.task = None
        self.tasks_started = 0
        self.hosts = {}
        self.host_last_task = {}
        self.stats = None
        self.version = 0
        self.reported = -1

    def on_event(self, event):
        kind = event.get("event")
        data = event.get("event_data") or {}
        with self.lock:
            if kind == "playbook_on_play_start":
                self.play = data.get("play")
            elif kind == "playbook_on_task_start":
                self.task = data.get("task")
                self.tasks_started += 1
            elif kind in HOST_RESULTS:
                host = data.get("host")
                if host:
                    self.hosts.setdefault(
                        host,
                        {
                            "ok": 0,
                            "changed": 0,
                            "failed": 0,
                            "unreachable": 0,
                            "skipped": 0,
                        },
                    )
                    self.hosts[host][HOST_RESULTS[kind]] += 1
                    if kind == "runner_on_ok" and (data.get("res") or {}).get(
                        "changed"
                    ):
                        self.hosts[host]["changed"] += 1
                    self.host_last_task[host] = data.get("task")
            elif kind == "runner_on_start":
                host = data.get("host")
                if host:
                    self.host_last_task[host] = data.get("task")
            elif kind == "playbook_on_stats":
                self.stats = stats_from_event(data)
            else:
                return True
            self.version += 1
        return True  # keep ansible-runner's job_events files

    def snapshot(self):
        with self.lock:
            return {
                "play": self.play,
                "task": self.task,
                "tasks_started": self.tasks_started,
                "hosts": {h: dict(c) for h, c in self.hosts.items()},
                "host_last_task": dict(self.host_last_task),
            }

    def changed(self):
        return self.version != self.reported

    def snapshot_if_changed(self):
        with self.lock:
            if self.version == self.reported:
                return None
            self.reported = self.version
        return self.snapshot()


HOST_RESULTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}
STAT_KEYS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")


def stats_from_event(data):
    hosts = set()
    for key in STAT_KEYS:
        hosts.update((data.get(key) or {}).keys())
    return {
        host: {key: (data.get(key) or {}).get(host, 0) for key in STAT_KEYS}
        for host in sorted(hosts)
    }


def progress_from_artifacts(artifact_dir):
    """Rebuild a run's progress from its job_events folder, or return None."""
    folder = os.path.join(artifact_dir, "job_events")
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    progress = Progress()
    for name in sorted(names, key=_counter):
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                progress.on_event(json.load(handle))
        except (OSError, ValueError):
            logger.warning("could not read event file %s", os.path.join(folder, name))
    return progress.snapshot()


def _counter(name):
    try:
        return int(name.split("-", 1)[0])
    except ValueError:
        return 0
