"""Filters over ``ss -ltnpH`` output: who listens where, and which wanted ports are taken.

``port_conflicts`` backs the site preflight and the nginx, postgresql and redis roles'
own: before anything changes, each port a host's services will need must be free or
already held by the program meant to hold it (a re-run finds nginx on 443, which is
fine; a fresh host with another web server on 443 is not).
"""

from __future__ import annotations

import re
from typing import Any

_USERS = re.compile(r'\("([^"]+)",pid=(\d+)')


def listeners(ss_output: str) -> list[dict[str, Any]]:
    """One entry per listening socket: ``{"address", "port", "programs": [(name, pid)]}``."""
    found = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        address, _, port = fields[3].rpartition(":")
        if not port.isdigit():
            continue
        programs = [(name, int(pid)) for name, pid in _USERS.findall(line)]
        found.append({"address": address, "port": int(port), "programs": programs})
    return found


def port_conflicts(ss_output: str, wanted: list[dict[str, Any]]) -> list[str]:
    """Sentences for each wanted ``{"port", "program", "for"}`` held by another program.

    A socket whose owner ``ss`` could not name (no ``users:``) counts as taken.
    """
    problems = []
    sockets = listeners(ss_output)
    for want in wanted:
        port = int(want["port"])
        for sock in sockets:
            if sock["port"] != port:
                continue
            names = sorted({name for name, _ in sock["programs"]})
            if names == [want["program"]]:
                continue
            holders = ", ".join(
                f"{name} (pid {pid})" for name, pid in sorted(set(sock["programs"]))[:3]
            )
            problems.append(
                f"port {port} (wanted by {want['program']} for {want['for']}) is held by "
                f"{holders or 'an unnamed program'} on {sock['address']}"
            )
            break
    return problems


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"listeners": listeners, "port_conflicts": port_conflicts}
