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
