"""ansible.cfg names only folders and files that exist: a path to nothing hides a typo and
tells a reader that plugins live where there are none."""

from __future__ import annotations

import configparser

from tests.conftest import REPO


def test_every_configured_path_exists() -> None:
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPO / "ansible.cfg")
    paths = {
        f"[{section}] {key}": value
        for section in config.sections()
        for key, value in config.items(section)
        if key.endswith(("_path", "_plugins", "library", "module_utils", "inventory"))
    }
    assert "[defaults] library" in paths, sorted(paths)
    missing = [
        f"{where} = {item}"
        for where, value in paths.items()
        for item in value.split(":")
        if item.startswith("./") and not (REPO / item).exists()
    ]
    assert not missing, "ansible.cfg names paths that do not exist: " + ", ".join(missing)
