"""A writer process for the concurrency tests: hammers shared rows through jobs.state.

Usage: python tests/concurrent_writer.py NAME OUTPUT_RUN FIRST_RUN LAST_RUN ROUNDS.
Prints one JSON line with what this process stored and which runs it ended.
Configuration comes from the environment, as for the worker.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select  # noqa: E402

from jobs import state  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.extensions import db  # noqa: E402
from webapp.models import Deployment  # noqa: E402


def append_once(run_id, text):
    """Append ``text`` with a compare-and-set on the offset; return the retries needed."""
    retries = 0
    while True:
        db.session.rollback()
        offset = db.session.scalar(
            select(Deployment.output_offset).where(Deployment.id == run_id)
        )
        if state.append_output(run_id, text, offset + len(text), offset):
            return retries
        retries += 1


def main():
    name, output_run, first, last, rounds = sys.argv[1:6]
    app = create_app()
    won = []
    retries = 0
    with app.app_context():
        run_ids = list(range(int(first), int(last) + 1))
        for number in range(int(rounds)):
            retries += append_once(int(output_run), f"{name}:{number}\n")
            run_id = run_ids[number % len(run_ids)]
            state.heartbeat(run_id, 1)
            if state.finish(
                run_id,
                "abandoned",
                f"ended by {name}",
                decided_by="sweep",
                explain=True,
            ):
                won.append(run_id)
        db.session.remove()
    print(json.dumps({"name": name, "won": won, "retries": retries}), flush=True)


if __name__ == "__main__":
    main()
