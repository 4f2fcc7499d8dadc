"""Checks on extra vars a user sends, and the split of secret values from the rest.

Names must be plain variable names. Connection and privilege settings
(``ansible_user``, ``ansible_become``, ``ansible_ssh_common_args``...), every
other ``ansible_*`` name, Ansible's magic variables and Jinja templates are
rejected unless the caller's role may override them (admins).

Secret vars are those whose name matches SECRET_VAR_PATTERN or that the
playbook lists in a ``# secret_vars: a, b`` header line. Their values are
stored masked in SQL and reach the job through jobs.secret_store.
"""

import re

from flask import current_app

MASK = "********"
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Ansible's magic and connection variables: see "Special Variables" in the
# ansible-core 2.19 documentation.
RESERVED_NAMES = frozenset(
    {
        "environment",
        "group_names",
        "groups",
        "hostvars",
        "inventory_dir",
        "inventory_file",
        "inventory_hostname",
        "inventory_hostname_short",
        "omit",
        "play_hosts",
        "playbook_dir",
        "role_path",
        "vars",
    }
)
TEMPLATE_MARKERS = ("{{", "{%", "{#")


class ExtraVarsError(ValueError):
    """An extra var is not allowed; ``value`` names the offending variable."""

    def __init__(self, message, value, status=400):
        super().__init__(message)
        self.value = value
        self.status = status


def is_privileged(name):
    lowered = name.lower()
    return (
        lowered.startswith("ansible_")
        or lowered.startswith("_ansible")
        or lowered in RESERVED_NAMES
    )


def _has_template(value):
    if isinstance(value, str):
        return any(marker in value for marker in TEMPLATE_MARKERS)
    if isinstance(value, dict):
        return any(_has_template(k) or _has_template(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_template(item) for item in value)
    return False


def check(extra_vars, *, privileged_allowed):
    """Raise ExtraVarsError for a name or value the caller may not send."""
    for name, value in extra_vars.items():
        if not VAR_NAME.fullmatch(name):
            raise ExtraVarsError(
                f"Invalid extra var name {name!r}: use letters, digits and '_', "
                "starting with a letter or '_'.",
                name,
            )
        if privileged_allowed:
            continue
        if is_privileged(name):
            raise ExtraVarsError(
                f"Extra var {name!r} overrides a connection, privilege or built-in "
                "Ansible setting; only admins may set it. Set it in the inventory "
                "instead.",
                name,
                status=403,
            )
        if _has_template(value):
            raise ExtraVarsError(
                f"Extra var {name!r} contains a Jinja template ('{{{{', '{{%' or "
                "'{#'); only admins may send templates. Send plain values.",
                name,
                status=403,
            )


def secret_names(extra_vars, playbook_meta):
    """Return the sorted names of ``extra_vars`` that are secret."""
    pattern = re.compile(current_app.config["SECRET_VAR_PATTERN"], re.IGNORECASE)
    declared = {
        name.strip()
        for name in (playbook_meta.get("secret_vars") or "").split(",")
        if name.strip()
    }
    return sorted(
        name for name in extra_vars if name in declared or pattern.search(name)
    )


def split_secrets(extra_vars, names):
    """Return (extra vars with secret values masked, {name: secret value})."""
    masked = {
        name: (MASK if name in names else value) for name, value in extra_vars.items()
    }
    return masked, {name: extra_vars[name] for name in names}
