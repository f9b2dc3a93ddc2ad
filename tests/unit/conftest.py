"""Our modules import shared code as ``ansible.module_utils.<name>`` (Ansible ships
plugins/module_utils/<name>.py with the module). In the unit tests that name is an alias of
``plugins.module_utils.<name>``: one module object under both names, so a test that patches
``plugins.module_utils.slipway_http.get`` patches what the module under test calls."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

from tests.conftest import REPO

UTILS = REPO / "plugins" / "module_utils"
_PREFIX = "ansible.module_utils."


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, real_name: str) -> None:
        self.real_name = real_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.real_name)

    def exec_module(self, module: ModuleType) -> None:
        """Already executed under its real name."""


class _ProjectModuleUtils(importlib.abc.MetaPathFinder):
    """Finds ansible.module_utils.<name> for each plugins/module_utils/<name>.py."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        name = fullname.removeprefix(_PREFIX)
        if name == fullname or "." in name or not (UTILS / f"{name}.py").is_file():
            return None
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(f"plugins.module_utils.{name}")
        )


if not any(isinstance(finder, _ProjectModuleUtils) for finder in sys.meta_path):
    sys.meta_path.insert(0, _ProjectModuleUtils())
