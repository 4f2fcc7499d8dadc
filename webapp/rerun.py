"""Partial re-runs: which hosts of an ended run to launch it on again.

Per-host results come from ansible-runner's events. ``stats`` is the
playbook's recap (``playbook_on_stats``) when the playbook reached its end,
and ``progress`` contains the results counted so far when it was interrupted.
"""

from .models import RunStatus

HOST_CHOICES = ("all", "failed", "unfinished")
# Runs that stopped before their playbook ended.
INTERRUPTED = (RunStatus.ABANDONED.value, RunStatus.TIMEOUT.value)


class RerunError(ValueError):
    """A re-run request names an unknown choice or no host to run on."""

    def __init__(self, message, value, status=400):
        super().__init__(message)
        self.field = "hosts"
        self.value = value
        self.status = status


def host_results(run):
    """Return {host: "ok" | "failed" | "unreachable" | "unfinished"} for a run.

    A host with a recap line finished. Without a recap, a host that failed
    or was unreachable finished too, because Ansible runs no more tasks on
    it. Every other host the run reached is unfinished.
    """
    results = {}
    if run.stats:
        for host, counts in run.stats.items():
            if counts.get("failures"):
                results[host] = "failed"
            elif counts.get("dark"):
                results[host] = "unreachable"
            else:
                results[host] = "ok"
        return results
    for host, counts in ((run.progress or {}).get("hosts") or {}).items():
        if counts.get("failed"):
            results[host] = "failed"
        elif counts.get("unreachable"):
            results[host] = "unreachable"
        else:
            results[host] = "unfinished"
    return results


def hosts_to_rerun(run, choice, scope):
    """Return the host limit for re-running ``run``, or None for no limit.

    ``scope`` is the hosts the run covered (its target expanded and limited).
    Raises RerunError for an unknown choice, a run still active, or a choice
    that leaves no host.
    """
    choice = choice or "all"
    if choice not in HOST_CHOICES:
        raise RerunError(
            f"Invalid hosts {choice!r}: use one of {', '.join(HOST_CHOICES)}.",
            choice,
        )
    if choice == "all":
        return run.limit_hosts
    if run.is_active:
        raise RerunError(
            f"Run {run.id} is still {run.status}; a re-run on {choice} hosts "
            "needs a run that has ended.",
            choice,
            status=409,
        )

    results = host_results(run)
    if choice == "failed":
        hosts = {h for h, r in results.items() if r in ("failed", "unreachable")}
        empty = "has no failed or unreachable host"
    else:
        if run.status not in INTERRUPTED:
            raise RerunError(
                f"Run {run.id} ended as {run.status}; a re-run on unfinished hosts "
                "is only for an abandoned or timed-out run.",
                choice,
                status=409,
            )
        done = {h for h, r in results.items() if r != "unfinished"}
        hosts = set(scope) - done
        empty = "has no unfinished host"
    hosts &= set(scope)
    if not hosts:
        raise RerunError(
            f"Run {run.id} {empty}; relaunch it on all hosts instead.",
            choice,
            status=409,
        )
    return sorted(hosts)
