"""The catalog: playbooks found in PLAYBOOK_DIR and hosts and groups of the inventory.

Launch requests name playbooks and targets only through this catalog, so a
path or a pattern a user typed never reaches Ansible unchecked.

A playbook describes itself in a header of comment lines at the top of its
file, each ``# key: value``, read until the first line that is not a comment::

    # description: Update every package on a Debian host
    # os_family: Debian
    # timeout: 1800
"""

import fnmatch
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

OS_FAMILIES = ("Linux", "Debian", "RedHat", "Windows")
PLAYBOOK_SUFFIXES = (".yml", ".yaml")
HEADER_LINE = re.compile(r"^#\s*([a-z_]+)\s*:\s*(.*?)\s*$")
# One part of a limit pattern: a host or group name, or a glob of them. No
# '~' regular expressions, '[0:2]' subscripts or '@file' parts, and never a
# leading '-', which ansible-playbook would read as an option.
# An inventory host name as a host limit may list it.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
LIMIT_PART = re.compile(r"[A-Za-z0-9_*?][A-Za-z0-9_.*?\-]*")
MAX_TARGET_LENGTH = 255


class CatalogError(ValueError):
    """A playbook or target is not in the catalog."""

    def __init__(self, message, field, value):
        super().__init__(message)
        self.field = field
        self.value = value


@dataclass
class Playbook:
    path: str
    name: str
    description: str = ""
    os_family: str | None = None
    timeout: int | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self):
        return {
            "path": self.path,
            "name": self.name,
            "description": self.description,
            "os_family": self.os_family,
            "timeout": self.timeout,
        }


def read_header(path):
    """Return the ``# key: value`` pairs at the top of a playbook file."""
    meta = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            stripped = line.strip()
            if stripped in ("", "---"):
                continue
            if not stripped.startswith("#"):
                break
            match = HEADER_LINE.match(stripped)
            if match:
                meta[match.group(1)] = match.group(2)
    return meta


def _playbook_from_file(root, path):
    relative = path.relative_to(root).as_posix()
    meta = read_header(path)
    os_family = meta.get("os_family")
    if os_family and os_family not in OS_FAMILIES:
        logger.warning(
            "playbook %s: os_family %r is not one of %s; ignored",
            relative,
            os_family,
            ", ".join(OS_FAMILIES),
        )
        os_family = None
    timeout = None
    if meta.get("timeout"):
        try:
            timeout = int(meta["timeout"])
        except ValueError:
            logger.warning(
                "playbook %s: timeout %r is not an integer", relative, meta["timeout"]
            )
    return Playbook(
        path=relative,
        name=meta.get("name") or path.stem,
        description=meta.get("description", ""),
        os_family=os_family,
        timeout=timeout,
        meta=meta,
    )


def list_playbooks(playbook_dir):
    """Return every playbook under ``playbook_dir``, sorted by path.

    Files reached through a symlink that leaves the folder are skipped.
    """
    root = Path(playbook_dir).resolve()
    playbooks = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # Role and variable folders hold YAML that is not a playbook.
        dirnames[:] = [
            d
            for d in dirnames
            if d
            not in ("roles", "group_vars", "host_vars", "vars", "files", "templates")
        ]
        for filename in sorted(filenames):
            if not filename.endswith(PLAYBOOK_SUFFIXES) or filename.startswith("."):
                continue
            if filename.startswith("-"):
                # ansible-playbook would read the name as an option.
                logger.warning(
                    "playbook %s: names starting with '-' are skipped", filename
                )
                continue
            path = Path(dirpath) / filename
            if not path.resolve().is_relative_to(root):
                continue
            playbooks.append(_playbook_from_file(root, path))
    return sorted(playbooks, key=lambda p: p.path)


def find_playbook(playbook_dir, name):
    """Return the catalog entry for ``name`` or raise CatalogError."""
    if not isinstance(name, str) or not name:
        raise CatalogError(
            "A playbook is required, for example 'ping.yml'.", "playbook", name
        )
    for playbook in list_playbooks(playbook_dir):
        if playbook.path == name:
            return playbook
    raise CatalogError(
        f"Unknown playbook {name!r}. Use a path relative to PLAYBOOK_DIR as listed "
        "by GET /api/playbooks, for example 'ping.yml'.",
        "playbook",
        name,
    )


class Inventory:
    """Hosts and groups of the inventory, read through ansible-runner.

    ``ansible-inventory`` takes about a second, so the result is cached until
    the inventory file changes.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = None
        self._data = None

    def _current_stamp(self):
        if self.path.is_dir():
            files = [p for p in self.path.rglob("*") if p.is_file()]
        else:
            files = [self.path]
        return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in files))

    def _load(self):
        from ansible_runner.interface import get_inventory

        out, err = get_inventory(
            action="list",
            inventories=[str(self.path)],
            response_format="json",
            quiet=True,
        )
        if not out:
            raise CatalogError(
                f"Could not read the inventory {str(self.path)!r}: {err}",
                "inventory",
                str(self.path),
            )
        return out if isinstance(out, dict) else json.loads(out)

    def data(self):
        with self._lock:
            stamp = self._current_stamp()
            if stamp != self._stamp:
                self._data = self._load()
                self._stamp = stamp
            return self._data

    def hostvars(self, host):
        return self.data().get("_meta", {}).get("hostvars", {}).get(host, {})

    def groups(self):
        """Return {group: [hosts]} with each group's hosts, children included."""
        data = self.data()
        result = {}

        def members(group, seen):
            if group in seen:
                return set()
            seen.add(group)
            entry = data.get(group, {})
            hosts = set(entry.get("hosts", []))
            for child in entry.get("children", []):
                hosts |= members(child, seen)
            return hosts

        for group in data:
            if group == "_meta":
                continue
            result[group] = sorted(members(group, set()))
        return result

    def hosts(self):
        hosts = set(self.data().get("_meta", {}).get("hostvars", {}))
        for members in self.groups().values():
            hosts.update(members)
        return sorted(hosts)

    def os_family(self, host):
        """Return the OS family declared for ``host`` (``os_family`` host var)."""
        hostvars = self.hostvars(host)
        family = hostvars.get("os_family")
        if family in OS_FAMILIES:
            return family
        if hostvars.get("ansible_connection") in ("winrm", "psrp"):
            return "Windows"
        return None

    def targets(self):
        """Return the hosts and groups as dicts for pages and the API."""
        groups = self.groups()
        hosts = [
            {"name": host, "kind": "host", "os_family": self.os_family(host)}
            for host in self.hosts()
        ]
        group_list = [
            {
                "name": name,
                "kind": "group",
                "hosts": members,
                "os_family": _common_family([self.os_family(h) for h in members]),
            }
            for name, members in sorted(groups.items())
        ]
        return {"hosts": hosts, "groups": group_list}

    def expand(self, target):
        """Return the hosts that a host, a group or a limit pattern covers."""
        groups = self.groups()
        if target in groups:
            return groups[target]
        if target in self.hosts():
            return [target]
        try:
            return sorted(self.validate_target(target) or [])
        except CatalogError:
            return []

    def validate_target(self, target):
        """Raise CatalogError unless ``target`` is a host, a group or a valid limit pattern.

        A limit pattern is parts joined by ':' or ',', each a host or group
        name or a '*'/'?' glob matching at least one of them, optionally
        prefixed with '&' (intersection) or '!' (exclusion) after the first.
        It must select at least one host. Returns the selected hosts.
        """
        if not isinstance(target, str) or not target:
            raise CatalogError(
                "A target is required: an inventory host or group, for example 'local'.",
                "target",
                target,
            )
        if len(target) > MAX_TARGET_LENGTH:
            raise CatalogError(
                f"Invalid target {target[:40]!r}...: a target is at most "
                f"{MAX_TARGET_LENGTH} characters.",
                "target",
                target,
            )
        parts = re.split(r"[:,]", target)
        for index, part in enumerate(parts):
            name = part[1:] if part[:1] in ("!", "&") else part
            if index == 0 and name != part:
                raise CatalogError(
                    f"Invalid target {target!r}: start with a host or group to "
                    "include before any '!' or '&' part.",
                    "target",
                    target,
                )
            if not LIMIT_PART.fullmatch(name):
                raise CatalogError(
                    f"Invalid target {target!r}: the part {part!r} is not a host or "
                    "group name. Use letters, digits, '.', '-', '_' and the "
                    "wildcards '*' and '?', joined by ':' or ','.",
                    "target",
                    target,
                )
        hosts = self.select(target)
        if not hosts:
            raise CatalogError(
                f"Target {target!r} selects no host of the inventory.",
                "target",
                target,
            )
        return hosts

    def _match(self, name, target):
        """Return the hosts that one part of a limit pattern names."""
        groups = self.groups()
        all_hosts = self.hosts()
        if "*" in name or "?" in name:
            matched = set(fnmatch.filter(all_hosts, name))
            for group in fnmatch.filter(groups, name):
                matched.update(groups[group])
            if not matched:
                raise CatalogError(
                    f"Unknown target {name!r} in {target!r}: the pattern matches no "
                    "host or group of the inventory.",
                    "target",
                    target,
                )
            return matched
        if name in groups:
            return set(groups[name])
        if name in all_hosts:
            return {name}
        raise CatalogError(
            f"Unknown target {name!r}. Use a host or group from the inventory "
            "as listed by GET /api/targets.",
            "target",
            target,
        )

    def select(self, target):
        """Return the sorted hosts a validated limit pattern selects."""
        included, required, excluded = set(), None, set()
        for part in re.split(r"[:,]", target):
            if part.startswith("!"):
                excluded |= self._match(part[1:], target)
            elif part.startswith("&"):
                hosts = self._match(part[1:], target)
                required = hosts if required is None else required & hosts
            else:
                included |= self._match(part, target)
        if required is not None:
            included &= required
        return sorted(included - excluded)


def _common_family(families):
    known = {f for f in families if f}
    if len(known) == 1:
        return known.pop()
    if known and known <= {"Debian", "RedHat", "Linux"}:
        return "Linux"
    return None
