"""Test-suite wiring shared by every directory.

`make test` runs pytest with xdist (`--dist loadgroup`): each Molecule scenario,
the sandbox test and the app tests get a group of their own, so the slow VM
work runs side by side while tests sharing one PostgreSQL/Redis stay together.
"""

from __future__ import annotations

import os

import pytest


# tryfirst: xdist reads the groups in its own collection hook, which must come after this one.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        rel = os.path.relpath(str(item.path), str(config.rootpath))
        top = rel.split(os.sep)[0]
        group = "app" if top == "app" else "vm" if item.get_closest_marker("vm") else "unit"
        item.add_marker(pytest.mark.xdist_group(group))
    # xdist hands each worker one group, then a second one, in this order (pyproject turns
    # off its reordering by test count), then the rest as workers free up: the four longest
    # first, one per worker; the k-th group of the second round runs on the worker of the
    # k-th of the first (the backup scenario as the fifth group ran behind cluster: CI
    # headed for ~70 min).
    items.sort(key=lambda item: _GROUP_ORDER.get(_group(item), len(_GROUP_ORDER)))


# Measured on 2 cores with 4 workers (minutes): cluster 33, split 15, check-mode 11,
# allinone 12 (27 beside the others), host-packages 2, default 5, vm 4, app 4, unit 5;
# backup 8 alone, 11 beside the others; monitoring 7 alone.
_GROUP_ORDER = {
    name: rank
    for rank, name in enumerate(
        [
            # first round, one per worker
            "molecule-cluster",
            "molecule-split",
            "check-mode",
            "molecule-allinone",
            # second round: behind cluster the shortest; behind check-mode the monitoring
            # scenario, whose converge is then over before the allinone's zero-downtime
            # trial (a whole-site converge beside that trial made it time out, seen with
            # backup and, behind split, with monitoring); behind allinone the backup one
            "host-packages",
            "app",
            "molecule-monitoring",
            "molecule-backup",
            # then whichever worker frees first
            "unit",
            "molecule-default",
            "vm",
        ]
    )
}


def _group(item: pytest.Item) -> str:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.args[0]) if marker and marker.args else ""
