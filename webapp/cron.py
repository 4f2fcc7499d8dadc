"""Cron expressions read as wall-clock times in an IANA time zone, turned into UTC.

Pure functions with no Flask or database access, shared by the web app (to
validate and show the next times) and the scheduler (to fire occurrences).

Daylight-saving rules follow Vixie cron:

- A wall time that does not exist (the skipped hour of a spring change) runs
  once, at the first valid instant after the gap. Several such times collapse
  into that one instant.
- A wall time that exists twice (the repeated hour of an autumn change) runs
  once, at its first instance.
- The exception: when the minute or hour field starts with ``*`` (every N
  minutes or hours), the repeated hour is a real hour of the schedule, so
  both instances run.
"""

from collections import deque
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from heapq import heappop, heappush
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, croniter

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# A wall time maps to instants at most this far from the naive wall time read
# as UTC, across one daylight-saving change (2 h covers every tz database zone).
MAX_SHIFT = timedelta(hours=3)


class CronError(ValueError):
    """A cron expression or time zone is invalid; ``field`` names which."""

    def __init__(self, message, field, value):
        super().__init__(message)
        self.field = field
        self.value = value


@lru_cache(maxsize=1)
def _zone_names():
    # available_timezones() reads the tz database folder on every call.
    return available_timezones()


def parse_zone(name):
    """Return the ZoneInfo for an IANA name such as ``Europe/Berlin``.

    Raises CronError naming the value when the zone is unknown.
    """
    if name is not None and not isinstance(name, str):
        raise CronError(
            f"Invalid time zone {name!r}: give an IANA name such as 'Europe/Berlin'.",
            "timezone",
            name,
        )
    if not name or not name.strip():
        raise CronError(
            "A time zone is required: an IANA name such as 'UTC' or 'Europe/Berlin'.",
            "timezone",
            name,
        )
    return _load_zone(name.strip())


@lru_cache(maxsize=512)
def _load_zone(name):
    # ZoneInfo also opens file paths; accept only names the tz database lists.
    if name not in _zone_names():
        raise CronError(
            f"Unknown time zone {name!r}: use an IANA name such as 'UTC', "
            "'Europe/Berlin' or 'America/New_York'.",
            "timezone",
            name,
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(
            f"Unknown time zone {name!r}: {exc}.", "timezone", name
        ) from exc


def normalize(expression, allow_seconds=False):
    """Return a cron expression with single spaces and aliases expanded.

    Accepts the five standard fields (minute, hour, day of month, month, day
    of week) or an alias such as ``@daily``. With ``allow_seconds`` a sixth
    field gives the seconds. Raises CronError naming the value otherwise.
    """
    if expression is not None and not isinstance(expression, str):
        raise CronError(
            f"Invalid cron expression {expression!r}: give text such as '0 3 * * 0'.",
            "cron",
            expression,
        )
    if not expression or not expression.strip():
        raise CronError(
            "A cron expression is required, for example '0 3 * * 0' "
            "(Sundays at 03:00).",
            "cron",
            expression,
        )
    return _normalize_text(expression, bool(allow_seconds))


@lru_cache(maxsize=512)
def _normalize_text(expression, allow_seconds):
    text = " ".join(expression.split())
    text = ALIASES.get(text.lower(), text)
    fields = text.split(" ")
    allowed = (5, 6) if allow_seconds else (5,)
    if len(fields) not in allowed:
        raise CronError(
            f"Invalid cron expression {expression!r}: expected 5 fields (minute hour "
            f"day-of-month month day-of-week), got {len(fields)}.",
            "cron",
            expression,
        )
    if not croniter.is_valid(text):
        raise CronError(
            f"Invalid cron expression {expression!r}: a field is out of range or "
            "malformed. Example: '0 3 * * 0' runs on Sundays at 03:00.",
            "cron",
            expression,
        )
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise CronError(
            f"Invalid cron expression {expression!r}: it never matches a date.",
            "cron",
            expression,
        ) from None
    return text


def repeats_in_every_hour(expression):
    """Return True when the minute or hour field starts with ``*``."""
    minute, hour = expression.split(" ")[:2]
    return minute.startswith("*") or hour.startswith("*")


def _first_instant(wall, zone):
    """Return the earliest UTC instant showing ``wall`` in ``zone``, or the gap's end."""
    local = wall.replace(tzinfo=zone, fold=0)
    instant = local.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # ``wall`` falls in a gap. With fold=0 zoneinfo reads it with the offset in
    # force before the gap, which lands after the gap's end: step back to it.
    after_gap = instant
    while True:
        earlier = after_gap - timedelta(minutes=1)
        if earlier.astimezone(zone).replace(tzinfo=None) < wall:
            break
        after_gap = earlier
    return after_gap.replace(second=0, microsecond=0)


def _instants(wall, zone, both_folds):
    first = _first_instant(wall, zone)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if (
        both_folds
        and second != first
        and second.astimezone(zone).replace(tzinfo=None) == wall
    ):
        return [first, second]
    return [first]


def occurrences(expression, zone, after):
    """Yield the UTC instants (aware) after ``after`` at which ``expression`` fires.

    ``expression`` must come from ``normalize``. The instants increase
    strictly, so each one fires once whatever the daylight-saving changes.
    """
    both_folds = repeats_in_every_hour(expression)
    start = after.astimezone(zone).replace(tzinfo=None) - MAX_SHIFT
    walls = croniter(expression, start)
    pending = []
    last = after
    while True:
        wall = walls.get_next(datetime)
        # No later wall time maps to an instant before this one.
        floor = _first_instant(wall, zone)
        while pending and pending[0] <= floor:
            instant = heappop(pending)
            if instant > last:
                last = instant
                yield instant
        for instant in _instants(wall, zone, both_folds):
            heappush(pending, instant)


def next_times(expression, zone, after, count):
    """Return the next ``count`` instants after ``after`` (aware UTC)."""
    result = []
    for instant in occurrences(expression, zone, after):
        result.append(instant)
        if len(result) == count:
            return result
    return result


def due_between(expression, zone, after, until, limit):
    """Return the instants in (after, until], oldest first, and how many exist.

    At most the ``limit`` latest instants are returned; the count includes
    the ones left out.
    """
    latest = deque(maxlen=limit)
    total = 0
    for instant in occurrences(expression, zone, after):
        if instant > until:
            break
        total += 1
        latest.append(instant)
    return list(latest), total
