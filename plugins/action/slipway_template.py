"""Render a template on the controller as ansible.builtin.template does, then write it on the
host with one call of the slipway_template module (its documentation says why)."""

from __future__ import annotations

import base64
import os
from typing import Any

from ansible._internal._templating import _template_vars
from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.template import trust_as_template
from jinja2.defaults import VARIABLE_END_STRING, VARIABLE_START_STRING

# What a task may set; the rest of ansible.builtin.template's options are not supported here
# (ansible-lint and the module's argument spec say so before anything runs).
TASK_ARGS = frozenset(
    {
        "src",
        "dest",
        "owner",
        "group",
        "mode",
        "validate",
        "backup",
        "variable_start_string",
        "variable_end_string",
    }
)
# Sent to the module, with the rendered text as `content_base64`.
MODULE_ARGS = ("src", "dest", "owner", "group", "mode", "validate", "backup")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = TASK_ARGS

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        args = self._task.args
        for name in ("src", "dest"):
            if not isinstance(args.get(name), str) or not args[name]:
                raise AnsibleActionFail(f"slipway_template needs {name} (a path)")
        if args.get("mode") == "preserve":
            raise AnsibleActionFail("slipway_template takes an explicit mode, not 'preserve'")
        try:
            source = self._find_needle("templates", args["src"])
        except AnsibleError as exc:
            raise AnsibleActionFail(to_text(exc)) from exc
        content = self._render(source, args, task_vars)
        module_args = {name: args[name] for name in MODULE_ARGS if name in args}
        module_args["content_base64"] = base64.b64encode(content.encode("utf-8")).decode("ascii")
        result.update(
            self._execute_module(
                module_name="slipway_template", module_args=module_args, task_vars=task_vars
            )
        )
        return result

    def _render(self, source: str, args: dict[str, Any], task_vars: dict[str, Any]) -> str:
        """The text ansible.builtin.template would write (its defaults: trim_blocks on,
        lstrip_blocks off, newline "\\n"; the same search path and template variables)."""
        template = trust_as_template(self._loader.get_text_file_contents(source))
        searchpath = [
            *task_vars.get("ansible_search_path", []),
            self._loader._basedir,
            os.path.dirname(source),
        ]
        searchpath = [p for base in searchpath for p in (f"{base}/templates", base)]
        template_vars = task_vars.copy()
        template_vars.update(
            _template_vars.generate_ansible_template_vars(
                path=args["src"],
                fullpath=source,
                dest_path=args["dest"],
                include_ansible_managed="ansible_managed" not in template_vars,
            )
        )
        overrides = {
            "variable_start_string": args.get("variable_start_string", VARIABLE_START_STRING),
            "variable_end_string": args.get("variable_end_string", VARIABLE_END_STRING),
            "trim_blocks": True,
            "lstrip_blocks": False,
            "newline_sequence": "\n",
        }
        templar = self._templar.copy_with_new_env(
            searchpath=searchpath, available_variables=template_vars
        )
        rendered = templar.template(template, escape_backslashes=False, overrides=overrides)
        return "" if rendered is None else str(rendered)
