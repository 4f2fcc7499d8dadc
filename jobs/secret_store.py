"""Values of secret extra vars, kept in Redis only while their run may need them.

The web process saves them when it enqueues a run, under a key that expires
after the run's timeout plus a day of queueing. The job reads them when it
starts and deletes them when it ends; canceling a queued run deletes them
too. They never reach SQL, the logs or a page: output copied from a run is
passed through ``redactor`` first.
"""

import json

KEY = "shepherd:secret-vars:{run_id}"
# Seconds a run may wait in the queue before its secret values expire.
QUEUE_ALLOWANCE = 24 * 3600
# Shorter values are not redacted from output, where they would match
# ordinary text.
MIN_REDACTED_LENGTH = 3
MASK = "********"


def save(connection, run_id, values, timeout):
    connection.set(
        KEY.format(run_id=run_id), json.dumps(values), ex=int(timeout) + QUEUE_ALLOWANCE
    )


def load(connection, run_id):
    """Return the saved {name: value} of a run, or None if there is none."""
    raw = connection.get(KEY.format(run_id=run_id))
    return None if raw is None else json.loads(raw)


def delete(connection, run_id):
    connection.delete(KEY.format(run_id=run_id))


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def redactor(values):
    """Return a function that replaces every secret value in a text by a mask.

    Each value is also replaced in its JSON-escaped form, as Ansible prints
    task results. Returns None when there is nothing to redact.
    """
    needles = set()
    for leaf in _leaves(values or {}):
        if len(leaf) >= MIN_REDACTED_LENGTH:
            needles.add(leaf)
            needles.add(json.dumps(leaf)[1:-1])
    if not needles:
        return None
    # Longer values first, so that a value containing another is masked whole.
    ordered = sorted(needles, key=len, reverse=True)

    def redact(text):
        for needle in ordered:
            text = text.replace(needle, MASK)
        return text

    return redact
