"""Heartbeat ages that a sweeper can trust, however far off the wall clocks are.

A heartbeat's ``heartbeat_at`` is written on the database clock. With
PostgreSQL that is the server's clock; with SQLite it is the wall clock of
whichever process writes, and any wall clock can be stepped. So a sweeper
also keeps its own record: the time, on its monotonic clock, at which it
first saw each heartbeat value. A value that changed between two sweeps was
written between them, which bounds its age from both sides. The database
age is used only while it falls within those bounds. Otherwise the lower
bound is used, which is never more than the true age, so a skewed clock can
delay a verdict but never bring one forward.
"""

import time
from dataclasses import dataclass

# Seconds by which the database age may exceed the sweeper's bounds and still
# be trusted: a heartbeat is written a moment before its commit is visible.
TOLERANCE = 1.0


@dataclass
class Sighting:
    value: object
    # Monotonic time of the first sweep that saw ``value``.
    since: float
    # Monotonic time of the last sweep that saw an older value (or saw the
    # run not yet running); None when no such sweep is known.
    after: float | None
    # Monotonic time of the latest sweep that saw ``value``.
    last: float


@dataclass
class Age:
    """A heartbeat's age in seconds, the clock it was read on, and the inputs."""

    seconds: float
    clock: str
    database_age: float | None
    seen_unchanged_for: float
    # The heartbeat judged; a verdict is written only if it is still the last.
    heartbeat_at: object = None

    def evidence(self):
        return {
            "heartbeat_age": round(self.seconds, 3),
            "clock": self.clock,
            "database_age": (
                None if self.database_age is None else round(self.database_age, 3)
            ),
            "seen_unchanged_for": round(self.seen_unchanged_for, 3),
        }


class HeartbeatWatch:
    """Heartbeat values seen by one sweeping process, across its sweeps.

    Call ``begin`` before reading the rows of a sweep, so that a process
    frozen after the read judges with the time of the read, then ``age`` for
    every running run, then ``end``. Not thread-safe: one per sweeper.
    """

    def __init__(self):
        self.sightings = {}
        self.previous_sweep = None
        self.now = None
        self.seen = set()

    def begin(self):
        self.now = time.monotonic()
        return self.now

    def age(self, run, database_age):
        """Return the Age of ``run``'s heartbeat as of the sweep's start."""
        key = (run.id, run.attempt)
        self.seen.add(key)
        now = self.now
        sighting = self.sightings.get(key)
        if sighting is None:
            sighting = Sighting(run.heartbeat_at, now, self.previous_sweep, now)
        elif sighting.value != run.heartbeat_at:
            sighting = Sighting(run.heartbeat_at, now, sighting.last, now)
        else:
            sighting.last = now
        self.sightings[key] = sighting

        lower = now - sighting.since
        upper = None if sighting.after is None else now - sighting.after
        if (
            database_age is not None
            and upper is not None
            and lower - TOLERANCE <= database_age <= upper + TOLERANCE
        ):
            return Age(database_age, "database", database_age, lower, run.heartbeat_at)
        return Age(lower, "sweeper monotonic", database_age, lower, run.heartbeat_at)

    def forget(self):
        """Drop every sighting, after a sweep that could not read the database.

        Workers could not write heartbeats either, so every run gets a full
        grace, counted from the first sweep that reads the database again.
        """
        self.sightings = {}
        self.seen = set()
        self.previous_sweep = None

    def end(self):
        """Forget runs that were not running in this sweep."""
        for key in set(self.sightings) - self.seen:
            del self.sightings[key]
        self.seen = set()
        self.previous_sweep = self.now
