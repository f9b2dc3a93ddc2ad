"""Load the repository's root ``group_vars/`` as site-wide defaults.

Plain Ansible reads a ``group_vars/`` directory next to the inventory and next
to the playbook being run. The root ``group_vars/`` of this repository sits
next to ``site.yml`` only, so the plays that ``site.yml`` imports from
``playbooks/`` would never see it, and where it does apply it would beat the
inventory. This plugin makes it one layer for every play instead:

    site group_vars/all  <  inventory group_vars/all
    <  site group_vars/<group>  <  inventory group_vars/<group>  <  host_vars

It runs at the inventory stage, before ``host_group_vars`` (see
``vars_plugins_enabled`` in ansible.cfg, where order decides who wins), and
``host_group_vars`` is limited to the inventory stage so that it no longer
loads the root directory as playbook vars.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleParserError
from ansible.inventory.group import InventoryObjectType
from ansible.plugins.vars import BaseVarsPlugin
from ansible.utils.vars import combine_vars

DOCUMENTATION = """
    name: site_defaults
    short_description: Site-wide defaults from the repository's root group_vars/
    description:
      - Loads C(group_vars/<group>.yml) and C(group_vars/<group>/*.yml) from the repository
        root for every group, below the inventory's own group_vars.
      - The directory can be pointed elsewhere with C(SLIPWAY_SITE_GROUP_VARS) (used by tests).
    options:
      stage:
        description: Inventory stage only, so the layer sits below the inventory's group_vars.
        default: inventory
        choices: [inventory]
        ini:
          - key: stage
            section: vars_site_defaults
      directory:
        description: Directory that holds the site-wide group_vars.
        env:
          - name: SLIPWAY_SITE_GROUP_VARS
        ini:
          - key: directory
            section: vars_site_defaults
"""

REPO_ROOT = Path(__file__).resolve().parents[2]


class VarsModule(BaseVarsPlugin):
    """Site-wide group_vars, one layer below each inventory's own."""

    REQUIRES_ENABLED = True
    is_stateless = True

    def get_vars(self, loader: Any, path: str, entities: Any, cache: bool = True) -> dict[str, Any]:
        super().get_vars(loader, path, entities)
        directory = Path(self.get_option("directory") or REPO_ROOT / "group_vars")
        if not directory.is_dir():
            return {}
        if not isinstance(entities, list):
            entities = [entities]
        data: dict[str, Any] = {}
        for entity in entities:
            if getattr(entity, "base_type", None) is not InventoryObjectType.GROUP:
                continue  # site defaults are per group; hosts belong in the inventory
            for found in loader.find_vars_files(os.fspath(directory), entity.name):
                new_data = loader.load_from_file(
                    found, cache="all", unsafe=True, trusted_as_template=True
                )
                if not new_data:
                    continue
                try:
                    data = combine_vars(data, new_data)
                except Exception as exc:  # combine_vars raises AnsibleError subclasses
                    raise AnsibleParserError(f"Could not process {found!r}.") from exc
        return data
