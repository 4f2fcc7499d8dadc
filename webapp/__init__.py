"""Shepherd: launch Ansible playbooks, watch them run and read their history."""

import logging
import os
import sys

from flask import Flask


def create_app(test_config=None):
    """Build the Flask application from the environment or ``test_config``."""
    from . import (
        admin,
        api,
        cli,
        config,
        extensions,
        logs,
        monitoring,
        runs,
        schedules,
        users,
        views,
    )
    from .catalog import Inventory

    logs.configure()
    app = Flask(__name__, instance_path=config.DEFAULT_INSTANCE_DIR.as_posix())
    try:
        app.config.from_mapping(config.load())
    except config.ConfigError as exc:
        logging.getLogger(__name__).error("%s", exc)
        sys.exit(f"shepherd: configuration error: {exc}")
    if test_config:
        app.config.from_mapping(test_config)
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", _engine_options(app.config))

    # ansible-runner starts ansible-playbook and ansible-inventory from PATH.
    bin_dir = os.path.dirname(app.config["PYTHON"])
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")

    extensions.db.init_app(app)
    extensions.migrate.init_app(
        app,
        extensions.db,
        directory=str(config.ROOT / "migrations"),
        render_as_batch=True,
    )
    extensions.enable_sqlite_wal(app)
    app.extensions["inventory"] = Inventory(app.config["INVENTORY"])

    # Users, the per-route policy, CSRF, headers and error pages.
    from . import audit, auth, policy, security

    auth.init_app(app)
    policy.init_app(app)
    security.init_app(app)

    app.register_blueprint(views.bp)
    app.register_blueprint(runs.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(schedules.bp)
    app.register_blueprint(schedules.api_bp)
    app.register_blueprint(monitoring.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(users.api_bp)
    cli.register(app)
    return app


def _engine_options(config):
    if config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Wait for a writer instead of raising "database is locked".
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}
