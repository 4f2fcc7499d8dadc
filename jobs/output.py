"""Copying a run's output from ansible-runner's stdout file into SQL.

ansible-runner writes everything the playbook prints to
``<artifact_dir>/stdout`` and flushes it after every event. The work horse
copies new bytes from there every fraction of a second; when the horse dies,
the process that ends the run on the same host copies what is left, so nothing
printed before a fault is lost.
"""

import logging
import os

from webapp.extensions import db
from webapp.models import Deployment

from . import secret_store, state

logger = logging.getLogger(__name__)

# At most this much is read and stored per chunk, which bounds memory use
# however much a playbook prints.
CHUNK_BYTES = 1024 * 1024


def stdout_path(artifact_dir):
    return os.path.join(artifact_dir, "stdout")


def copy_new_output(
    run_id, artifact_dir, offset, redact=None, final=False, attempt=None
):
    """Store bytes of the stdout file past ``offset``; return the new offset.

    Bytes are decoded as UTF-8 with invalid sequences replaced. A multi-byte
    character split across two reads is completed on the next read. With
    ``redact`` (see jobs.secret_store.redactor), text is masked before it is
    stored, and only whole lines are copied until ``final``, so that a
    secret value is never split across two chunks. With ``attempt``, nothing
    is stored once the run has moved to another attempt.
    """
    path = stdout_path(artifact_dir)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return offset
    with handle:
        while True:
            handle.seek(offset)
            data = handle.read(CHUNK_BYTES)
            if not data:
                return offset
            data = _trim_partial_character(data)
            if redact is not None and not final:
                data = _whole_lines(data)
                if not data:
                    return offset
            text = data.decode("utf-8", errors="replace")
            if redact is not None:
                text = redact(text)
            new_offset = offset + len(data)
            if not state.append_output(
                run_id, text, new_offset, offset, attempt=attempt
            ):
                run = db.session.get(Deployment, run_id, populate_existing=True)
                if attempt is not None and run.attempt != attempt:
                    # A retry owns the run now, and its file starts at offset 0.
                    return offset
                # Another reader stored these bytes first: continue from its offset.
                new_offset = run.output_offset
            offset = new_offset


def _whole_lines(data):
    """Return ``data`` up to its last newline (all of it when it fills a chunk)."""
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) >= CHUNK_BYTES:
        return data
    return data[:end]


def _trim_partial_character(data):
    """Drop an incomplete UTF-8 sequence at the end of ``data``, if short."""
    if len(data) < CHUNK_BYTES:
        return data
    for back in range(1, 4):
        byte = data[-back]
        if byte & 0xC0 == 0xC0:  # a lead byte: the sequence may be cut
            return data[:-back]
        if byte & 0x80 == 0:  # plain ASCII: nothing is cut
            return data
    return data


def catch_up(run):
    """Copy the part of the stdout file of ``run`` that SQL does not have yet.

    For a run with secret extra vars, the values are read from Redis to mask
    the text and then deleted, because the run is ending. When they are
    already gone, the rest of the output is not copied.
    """
    if not run.artifact_dir:
        return
    redact = None
    if run.secret_vars:
        connection = _redis()
        values = secret_store.load(connection, run.id)
        if values is None:
            logger.warning(
                "run %s: output after byte %s not copied: the secret values "
                "needed to mask it are no longer in Redis",
                run.id,
                run.output_offset,
            )
            return
        redact = secret_store.redactor(values)
    try:
        copy_new_output(
            run.id,
            run.artifact_dir,
            run.output_offset or 0,
            redact,
            final=True,
            attempt=run.attempt,
        )
    except OSError:
        logger.exception(
            "run %s: could not read the output file in %s", run.id, run.artifact_dir
        )
    if run.secret_vars:
        secret_store.delete(connection, run.id)


def _redis():
    from flask import current_app

    from webapp.redis_conn import connect

    return current_app.extensions.get("redis") or connect(
        current_app.config["REDIS_URL"]
    )
