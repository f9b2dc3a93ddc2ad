"""What every module test needs, written once: exit_json and fail_json raise instead of
printing and exiting, so a test asserts on the arguments a module exited with (the way
ansible-core's own module tests do)."""

from __future__ import annotations

from typing import Any

import pytest
from ansible.module_utils import basic


class ExitJson(Exception):
    """AnsibleModule.exit_json was called; args[0] is its keyword arguments."""


class FailJson(Exception):
    """AnsibleModule.fail_json was called; args[0] is its keyword arguments."""


def _exit_json(self: Any, **kwargs: Any) -> None:
    raise ExitJson(kwargs)


def _fail_json(self: Any, **kwargs: Any) -> None:
    raise FailJson(kwargs)


def patch_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make exit_json and fail_json raise ExitJson and FailJson."""
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail_json)
