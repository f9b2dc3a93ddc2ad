"""The site-wide group_vars layer, proven with a real ansible-playbook run.

The fixture mirrors the repository: a top playbook with a ``group_vars/`` beside
it (the site defaults), a play imported from a subdirectory, and an inventory
with its own group_vars and host_vars. Both plays must see the same values:
site default < inventory group_vars < host_vars, group beating ``all``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import AnsibleRunner

HERE = Path(__file__).parent
REPO = HERE.parents[1]

EXPECTED = {
    # only the site layer defines it: every play sees it, imported ones too
    "k_site_all": "site-all",
    # the inventory's group_vars/all beats the site's group_vars/all
    "k_site_all_inv_all": "inventory-all",
    # as in plain Ansible, a specific group beats `all`, whichever layer it comes from
    "k_site_web_inv_all": "site-web",
    # the inventory's group_vars/web beats the site's group_vars/web
    "k_site_web_inv_web": "inventory-web",
    # host_vars beat every group layer
    "k_inv_web_host": "host",
    "k_site_all_host": "host",
    # group_vars files (site ones included) beat vars written in the inventory file,
    # as Ansible's own group_vars/ does
    "k_site_all_inv_file": "site-all",
}


@pytest.fixture
def dumps(tmp_path: Path, ansible: AnsibleRunner) -> dict[str, dict[str, str]]:
    proc = ansible(
        "ansible-playbook",
        "-i",
        str(HERE / "inventory"),
        str(HERE / "site.yml"),
        "-e",
        f"dump_dir={tmp_path}",
        env={
            "SLIPWAY_SITE_GROUP_VARS": str(HERE / "group_vars"),
            "ANSIBLE_LOCALHOST_WARNING": "false",
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("inline", "imported")}


@pytest.mark.parametrize("play", ["inline", "imported"])
def test_every_play_sees_the_same_layers(dumps: dict[str, dict[str, str]], play: str) -> None:
    assert dumps[play] == EXPECTED


def test_real_site_defaults_reach_every_inventory(ansible: AnsibleRunner) -> None:
    """The repository's own group_vars/ reaches each inventory, which may override it."""
    for inventory in ("prod", "staging"):
        proc = ansible("ansible-inventory", "-i", f"inventories/{inventory}", "--list")
        assert proc.returncode == 0, proc.stderr
        hostvars = json.loads(proc.stdout)["_meta"]["hostvars"]
        assert hostvars, f"inventories/{inventory} has no hosts"
        for host, hv in hostvars.items():
            # set only in the root group_vars/all
            assert hv["slipway_app_name"] == "slipway", host
            # set in the root group_vars/all and overridden by each inventory
            assert hv["slipway_environment"] == inventory, host
