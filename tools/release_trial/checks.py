"""Pure evaluation: what the probe and the playbooks said, read against the release each
step expects, and the sentence of each failed check. Nothing here runs a process."""

from __future__ import annotations

import re
import time
from typing import Any

import yaml

from .config import TASK_WAIT_S, TrialError

# What each step records in trial.json (None until measured), besides checks and passed.
FIGURES = {
    "deploy": ("failed_requests", "total_requests", "seconds", "from", "to"),
    "bad": ("failed_requests", "total_requests", "all_hosts_on_previous", "message"),
    "rollback": ("seconds", "failed_requests", "total_requests"),
    "concurrent": ("second_refused", "names_holder", "stale_lock_expired"),
    "task": ("task_completed", "restart_seconds"),
    "migrations": ("from", "release", "refused", "accepted", "downgraded", "database"),
}
# The sentence of each failed check, filled from its step's figures in trial.json.
WHY = {
    "rc_ok": "{playbook} exited {rc}; read {log}",
    "rc_failed": "{playbook} of a release that fails readiness exited 0; read {log}",
    "no_failed_requests": "{failed_requests} of {total_requests} requests failed ({by_status}, "
    "{errors}); each is a line of {requests}",
    "new_release": "the web tier did not move to a new release ({from} -> {to})",
    "hosts_on_new": "not every host runs the new release: {problems}",
    "stopped_at_first_web": "the output does not say the deploy stopped at {first_web} (it "
    "says {stopped_at}); read {log}",
    "all_hosts_on_previous": "not every web host is back on {previous}: {problems}",
    "bad_marked_failed": "release {bad} is not marked failed on every host that has it: "
    "{bad_states}",
    "hosts_on_original": "not every host is back on {target}: {problems}",
    "left_marked_rolled_back": "the release left, {left}, is not marked rolled-back on every "
    "host that has it: {left_states}",
    "lock_seen_held": "the fleet lock was never seen held while the first deploy.yml ran: {first}",
    "second_refused": "the second deploy.yml was not refused for the lock: {second}",
    "names_holder": "the second deploy's refusal does not say 'held by {holder}': {second}",
    "first_ok": "the first deploy.yml (good-2) failed: {first}",
    "hosts_on_good_2": "not every host runs good-2: {problems}",
    "stale_lock_expired": "restart.yml did not take over a stale lock: {restart}",
    "lock_free_after": "the lock is still held after restart.yml: {lock_after}",
    "job_accepted": "POST /api/jobs did not answer 202 with an id: {job_answer}",
    "task_completed": "job {job_id} is {job_status}, not succeeded, "
    f"{TASK_WAIT_S:.0f} s after it was sent",
    "mig_deploy_ok": "deploy.yml of the migrating release exited {rc} or moved nothing "
    "({from} -> {release}); read {log}",
    "mig_refused": "rollback.yml across the migration was not refused with both ways out "
    "(rollback_migrations=downgrade|accept): {refused}",
    "mig_untouched": "a refused rollback moved hosts: {untouched}",
    "mig_accept_ok": "rollback.yml -e rollback_migrations=accept did not bring every host back "
    "to {from}, ready on the newer database: {accepted}",
    "mig_downgrade_ok": "rollback.yml -e rollback_migrations=downgrade did not leave every host "
    "on {from} and the database at its head 0001: {downgraded} {database}",
    "ran": "the step stopped: {error}",
}


def flat(text: str) -> str:
    """Output without colour codes and with every run of whitespace as one space (the YAML
    result format folds long lines, and colour is set line by line)."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def off_release(probe: dict[str, Any], release: str | None, web_only: bool = False) -> list[str]:
    """A sentence per host of the probe that is not on `release`: a web host must have it as
    `current`, serve it and be live and ready; a worker host must have it as `current`."""
    hosts = probe.get("hosts", {})
    if not any(h.get("web") for h in hosts.values()):
        return ["the probe saw no web host"]
    problems = []
    for name, h in sorted(hosts.items()):
        if h.get("web") and not (h["current"] == h["serving"] == release and h["healthy"]):
            ready = "live and ready" if h["healthy"] else "NOT live and ready"
            problems.append(
                f"{name} has current {h['current']}, serves {h['serving']}, {ready} "
                f"(expected {release})"
            )
        elif not h.get("web") and not web_only and h["current"] != release:
            problems.append(f"{name} has current {h['current']} (expected {release})")
    return problems


def release_states(probe: dict[str, Any], release: str | None) -> dict[str, str]:
    """{host: state of `release`} for the hosts of the probe that have it."""
    hosts = sorted(probe.get("hosts", {}).items())
    return {n: r["state"] for n, h in hosts for r in h.get("releases", []) if r["id"] == release}


def stopped_at(output: str) -> tuple[str | None, str | None, str]:
    """(release, host, message) of the play's "The deploy to X stopped at HOST: ..." message."""
    text = flat(output)
    match = re.search(r"The \w+ to (\S+) stopped at ([^\s:]+):", text)
    if not match:
        return None, None, ""
    end = text.find("deploy again.", match.start())
    stop = end + len("deploy again.") if end > 0 else match.start() + 600
    return match.group(1), match.group(2), text[match.start() : stop]


def status_mismatches(output: str, probe: dict[str, Any]) -> list[str]:
    """Hosts whose status.yml line ("HOST: current X, serving Y, ...; rollback target Z")
    does not show what the probe saw: current, and the release a web host serves."""
    text, problems = flat(output), []
    for name, h in sorted(probe.get("hosts", {}).items()):
        at = text.find(f"{name}: current ")
        line = text[at : text.find("rollback target", at)] if at >= 0 else ""
        if f"current {h['current']}," not in line:
            problems.append(f"{name}'s line does not say current {h['current']}")
        elif h.get("web") and h.get("serving") and f"serving {h['serving']}," not in line:
            problems.append(f"{name}'s line does not say serving {h['serving']}")
    return problems


def single(span: Any) -> str | None:
    """An audit line's `from`/`to` when it names one release (not '?' nor a list)."""
    return span if isinstance(span, str) and span not in ("", "?") and "," not in span else None


def web_current(probe: dict[str, Any]) -> str | None:
    """`current` of the first web host of the probe."""
    web = probe.get("web") or [None]
    return probe.get("hosts", {}).get(web[0], {}).get("current")


def stale_lock(token: str, now: float) -> dict[str, Any]:
    """A lock file as app_lock writes it, last refreshed an hour ago, with a 60 s ttl."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 3600))
    return {
        "holder": "release-trial (a run that died)",
        "operation": "trial stale lock",
        "token": token,
        "acquired_at": now - 3600,
        "acquired_at_iso": iso,
        "refreshed_at": now - 3600,
        "refreshed_at_iso": iso,
        "ttl": 60,
    }


def ad_hoc_result(stdout: str) -> dict[str, Any]:
    """The module result of `ansible HOST -m MODULE` output, `HOST | SUCCESS => ` then the
    result as YAML (ansible.cfg's callback_result_format) or JSON (YAML reads both); for
    command and shell, `HOST | CHANGED | rc=0 >>` then the command's output (rc, stdout)."""
    head, sep, text = stdout.partition(" >>\n")
    if sep and "=>" not in head:
        rc = re.search(r"rc=(-?\d+)", head)
        return {"rc": int(rc.group(1)) if rc else None, "stdout": text.rstrip("\n")}
    at = stdout.find("=>")
    result = yaml.safe_load(stdout[at + 2 :]) if at >= 0 else None
    if not isinstance(result, dict):
        raise TrialError(f"no module result in the ad-hoc output: {stdout.strip()[-300:]}")
    return result
