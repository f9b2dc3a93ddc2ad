#!/usr/bin/python
"""Write a template rendered on the controller, in one module call (see the action plugin)."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: slipway_template
short_description: Render a template on the controller and write it on the host in one call
description:
  - Renders O(src) exactly as M(ansible.builtin.template) does (the same Jinja environment,
    template variables such as C(ansible_managed), C(trim_blocks) on, C(lstrip_blocks) off,
    newlines C(\n)) and makes O(dest) hold it with O(owner), O(group) and O(mode).
  - M(ansible.builtin.template) hands the rendered file to the copy action, which calls one
    module to read the host's file and another to write it or to set its attributes (two
    round trips a task). This sends the rendered text along and does all of it in one.
  - A changed file is written to a temporary file first, checked with O(validate) if given,
    then moved over O(dest) atomically; an unchanged one only gets its owner, group and mode
    set where they differ.
  - For text files (configuration, units); the rendered text is sent in the module's
    arguments, so keep to files of a few hundred kilobytes.
version_added: "0.1.0"
author: slipway
options:
  src:
    description:
      - The template, looked up as M(ansible.builtin.template) does (the role's C(templates/)
        first). The action plugin renders it; the module only reports it.
    type: str
    required: true
  content_base64:
    description:
      - Set by the action plugin to the rendered template, base64-encoded; never set it in a
        task. Marked C(no_log), so the host's log does not get every file's text; encoded, so
        that marking does not mask the new text where it appears in a diff's old text.
    type: str
  dest:
    description: Where the file goes on the host (an absolute path whose directory exists).
    type: path
    required: true
  owner:
    description: The file's owner.
    type: str
  group:
    description: The file's group.
    type: str
  mode:
    description: The file's mode, quoted (V("0644")) or symbolic.
    type: raw
  validate:
    description:
      - A command run on the new file before it replaces O(dest); C(%s) stands for the
        file's path. A non-zero exit fails the task and leaves O(dest) as it was.
    type: str
  backup:
    description: Keep the file O(dest) held, with a timestamp in its name, when it changes.
    type: bool
    default: false
  variable_start_string:
    description: The string that opens a variable in the template (Jinja's default if unset).
    type: str
  variable_end_string:
    description: The string that closes a variable in the template (Jinja's default if unset).
    type: str
notes:
  - Supports check mode (nothing is written; C(changed) is what a real run would report) and
    diff mode (the file's text before and after).
seealso:
  - module: ansible.builtin.template
"""

EXAMPLES = r"""
- name: Write pg_hba.conf
  slipway_template:
    src: pg_hba.conf.j2
    dest: /etc/postgresql/15/main/pg_hba.conf
    owner: postgres
    group: postgres
    mode: "0640"
  notify: Reload PostgreSQL

- name: Write the firewall rules (checked with `nft -c` before they land)
  slipway_template:
    src: nftables.conf.j2
    dest: /etc/nftables.conf
    owner: root
    group: root
    mode: "0600"
    validate: nft -c -f %s
"""

RETURN = r"""
dest:
  description: The file written or checked.
  returned: always
  type: str
checksum:
  description: SHA-1 of the rendered text (as M(ansible.builtin.template) reports it).
  returned: always
  type: str
backup_file:
  description: Where the previous content was kept, with O(backup) and a changed file.
  returned: changed and requested
  type: str
"""

# The largest file whose old text a diff shows (the rest is reported as too large).
DIFF_LIMIT = 128 * 1024


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def diff_text(old: bytes | None, new: str, dest: str, src: str) -> dict[str, str]:
    if old is None:
        before = ""
    elif len(old) > DIFF_LIMIT:
        before = f"[{dest}: {len(old)} bytes, too large to show]\n"
    else:
        before = old.decode("utf-8", errors="replace")
    return {"before": before, "after": new, "before_header": dest, "after_header": src}


def write_new(module: AnsibleModule, dest: str, data: bytes, validate: str | None) -> None:
    """Write data to a private temporary file, validate it there, move it over dest."""
    work = tempfile.mkdtemp(prefix="slipway-template-", dir=module.tmpdir)
    try:
        candidate = os.path.join(work, os.path.basename(dest))
        with open(candidate, "wb") as f:
            f.write(data)
        if validate:
            if "%s" not in validate:
                module.fail_json(msg=f"validate must contain %s: {validate}")
            rc, out, err = module.run_command(validate % candidate)
            if rc != 0:
                module.fail_json(
                    msg=f"failed to validate {dest}: {validate} exited {rc}; {dest} is unchanged",
                    exit_status=rc,
                    stdout=out,
                    stderr=err,
                )
        module.atomic_move(candidate, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "str", "required": True},
            "content_base64": {"type": "str", "no_log": True},
            "dest": {"type": "path", "required": True},
            "owner": {"type": "str"},
            "group": {"type": "str"},
            "mode": {"type": "raw"},
            "validate": {"type": "str"},
            "backup": {"type": "bool", "default": False},
            "variable_start_string": {"type": "str"},
            "variable_end_string": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["content_base64"] is None:
        module.fail_json(msg="slipway_template runs through its action plugin, which renders src")
    dest: str = p["dest"]
    if os.path.isdir(dest):
        module.fail_json(msg=f"{dest} is a directory; dest must name the file")
    if not os.path.isdir(os.path.dirname(dest) or "/") and not module.check_mode:
        module.fail_json(msg=f"the directory of {dest} does not exist; create it first")
    data = base64.b64decode(p["content_base64"])
    old = read_bytes(dest)
    result: dict[str, Any] = {
        "dest": dest,
        "checksum": hashlib.sha1(data).hexdigest(),
        "changed": old != data,
    }
    if module._diff and old != data:
        result["diff"] = diff_text(old, data.decode("utf-8"), dest, p["src"])
    if old != data and not module.check_mode:
        if p["backup"] and old is not None:
            result["backup_file"] = module.backup_local(dest)
        write_new(module, dest, data, p["validate"])
    file_args = module.load_file_common_arguments(p, path=dest)
    if old is None and module.check_mode:
        module.exit_json(**result)  # nothing to set attributes on
    result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
