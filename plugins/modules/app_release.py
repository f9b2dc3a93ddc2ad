#!/usr/bin/python
"""List, prepare, activate, mark and prune the app's releases on a host."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.slipway_release import (
    ReleaseError,
    append_log,
    current_release,
    finish_removal,
    is_installed,
    leftover_removals,
    list_releases,
    locked,
    metadata_updates,
    new_metadata,
    now,
    previous_release,
    prune_selection,
    read_log,
    read_metadata,
    release_dir,
    remove_release,
    rollback_target,
    switch_current,
    write_metadata,
)

DOCUMENTATION = r"""
---
module: app_release
short_description: Manage the app's releases on a host (metadata, current link, log, pruning)
description:
  - A release is C(<root>/releases/<id>/), installed by the playbook, which writes
    C(.installed) last. This module owns its C(release.json) (metadata and state), the link
    C(<root>/current) and the host's history C(<root>/deploy.log) (one JSON object a line).
  - Every file is written atomically (temporary file in the same directory, then rename), and
    C(current) is replaced by renaming a new link over it, so it exists at every moment.
  - O(state=list) reads only. O(state=prepared) records a release's metadata. O(state=active)
    switches C(current) to a release. O(state=marked) sets a release's state.
    O(state=pruned) removes old releases.
  - A release's state is one of C(prepared), C(active), C(previous) (what C(current) pointed at
    before the last switch), C(failed) or C(rolled-back).
  - "Changes are made under an exclusive lock, C(<root>/.release.lock), waited for at most 60 s."
version_added: "0.1.0"
author: slipway
options:
  state:
    description:
      - V(list) returns the releases, the current one, the rollback target and the log's tail.
      - V(prepared) writes C(release.json) of an installed O(release) with O(metadata); a release
        in state C(failed) or C(rolled-back) goes back to C(prepared) (a new attempt); an active
        or previous one keeps its state.
      - V(active) points C(current) at O(release), sets it C(active), the release that was current
        C(previous), and any other C(previous) release back to C(prepared).
      - V(marked) sets O(release)'s state to O(mark) with O(reason).
      - V(pruned) removes the oldest releases beyond O(keep), never the current one nor the
        rollback target.
    type: str
    choices: [list, prepared, active, marked, pruned]
    default: list
  root:
    description: The app's directory on the host.
    type: path
    default: /opt/slipway
  release:
    description: The release id (its directory name under C(<root>/releases/)).
    type: str
  metadata:
    description:
      - With O(state=prepared), the release's metadata, as C(version), C(git_revision),
        C(alembic_heads) (a list) and C(built_at); other keys are kept too.
      - Compared with what C(release.json) holds, except C(built_at), which a release keeps
        from the first time it was prepared. The keys C(id), C(state), C(prepared_at),
        C(deployed_by), C(deployed_at), C(state_changed_at) and C(reason) are this module's.
    type: dict
    default: {}
  deployed_by:
    description: With O(state=active), who deploys (recorded in C(release.json) and the log).
    type: str
  allow_failed:
    description: With O(state=active), activate a release in state C(failed) all the same.
    type: bool
    default: false
  mark:
    description: With O(state=marked), the state to set.
    type: str
    choices: [failed, rolled-back, previous, prepared]
  reason:
    description: With O(state=marked), why (recorded in C(release.json) and the log).
    type: str
  keep:
    description: With O(state=pruned), how many of the newest releases to keep (at least 2).
    type: int
    default: 5
  log_lines:
    description: With O(state=list), how many of the log's last lines to return.
    type: int
    default: 10
notes:
  - Supports check mode (nothing is written; C(changed) is what a real run would report) and
    diff mode with O(state=active) (C(current) before and after).
  - In check mode O(state=active) accepts an installed release without C(release.json), which
    the O(state=prepared) task before it would have written.
"""

EXAMPLES = r"""
- name: Record the release's metadata
  app_release:
    state: prepared
    release: "{{ _app_release_id }}"
    metadata:
      version: 0.1.0
      git_revision: 3bb674d
      alembic_heads: [a1b2c3d4e5f6]
      built_at: "2026-12-02T07:40:33Z"

- name: Switch to the release
  app_release:
    state: active
    release: "{{ _app_release_id }}"
    deployed_by: "{{ lookup('ansible.builtin.env', 'USER') }}"

- name: Look up the releases and the rollback target
  app_release:
    state: list
  register: __app_releases

- name: Mark the release failed
  app_release:
    state: marked
    release: "{{ _app_release_id }}"
    mark: failed
    reason: readiness check failed after the switch

- name: Keep the newest five releases
  app_release:
    state: pruned
    keep: 5
"""

RETURN = r"""
releases:
  description: With O(state=list), every release directory, newest first; its metadata plus
    C(installed) and C(current). One without a readable C(release.json) has state
    C(unknown), and C(error) when the file is there but broken.
  returned: state is list
  type: list
  elements: dict
  sample: [{"id": "0.1.0-a3147dfd6461", "state": "active", "installed": true, "current": true}]
current:
  description: With O(state=list), the release C(current) points at; null when there is none.
  returned: state is list
  type: str
rollback_target:
  description: With O(state=list), the release a rollback goes to; null when there is none.
  returned: state is list
  type: str
log:
  description: With O(state=list), the last O(log_lines) lines of C(deploy.log).
  returned: state is list
  type: list
  elements: dict
release:
  description: The release the module acted on.
  returned: state is prepared, active or marked
  type: str
previous:
  description:
    - With O(state=active), what C(current) pointed at before; null when there was no link.
    - With O(state=list), the release in state C(previous); null when there is none.
  returned: state is active or list
  type: str
switched:
  description: With O(state=active), whether C(current) was (or would be) switched.
  returned: state is active
  type: bool
removed:
  description: With O(state=pruned), the releases removed (or that would be).
  returned: state is pruned
  type: list
  elements: str
"""


class Releases:
    """One host's releases under root; every method returns the result to exit with."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.root: str = module.params["root"]
        self.check = module.check_mode

    def fail(self, msg: str) -> None:
        self.module.fail_json(msg=msg, root=self.root)

    def _installed(self, release: str, what: str) -> None:
        if not is_installed(self.root, release):
            self.fail(
                f"Release {release} is not installed on this host: "
                f"{release_dir(self.root, release)}/.installed is missing. "
                f"Install the release before {what} it."
            )

    def _log(self, event: str, **fields: Any) -> None:
        append_log(self.root, {"time": now(), "event": event, **fields})

    def listing(self, _release: str | None = None) -> dict[str, Any]:
        releases = list_releases(self.root)
        return {
            "changed": False,
            "releases": releases,
            "current": current_release(self.root),
            "previous": previous_release(releases),
            "rollback_target": rollback_target(releases),
            "log": read_log(self.root, self.module.params["log_lines"]),
        }

    def prepared(self, release: str) -> dict[str, Any]:
        self._installed(release, "preparing")
        given = self.module.params["metadata"]
        stamp = now()
        old = read_metadata(self.root, release)
        # A first preparation, or a new attempt at a failed or rolled-back release, is logged.
        logged = old is None or old.get("state") not in ("active", "previous", "prepared")
        if old is None:
            meta = new_metadata(release, given, stamp)
        else:
            updates = metadata_updates(old, given)
            meta = dict(old, **updates, id=release)
            if logged:
                meta.update(state="prepared", state_changed_at=stamp, reason=None)
            elif not updates and old.get("id") == release:
                return {"changed": False, "release": release}
        if not self.check:
            write_metadata(self.root, release, meta)
            if logged:
                was = None if old is None else old.get("state")
                self._log("prepared", release=release, from_state=was)
        return {"changed": True, "release": release}

    def active(self, release: str) -> dict[str, Any]:
        self._installed(release, "activating")
        meta = read_metadata(self.root, release)
        if meta is None and not self.check:
            self.fail(
                f"Release {release} has no {release_dir(self.root, release)}/release.json: "
                "prepare it first (state=prepared)."
            )
        meta = meta or {"id": release, "state": "prepared"}
        if meta.get("state") == "failed" and not self.module.params["allow_failed"]:
            self.fail(
                f"Release {release} is marked failed on this host since "
                f"{meta.get('state_changed_at')} (reason: {meta.get('reason')}); "
                "pass allow_failed=true to activate it anyway."
            )
        old = current_release(self.root)
        result: dict[str, Any] = {"changed": False, "release": release, "previous": old}
        result["switched"] = old != release
        if self.module._diff:
            result["diff"] = {"before": {"current": old}, "after": {"current": release}}
        if not result["switched"] and meta.get("state") == "active":
            return result
        result["changed"] = True
        if self.check:
            return result
        stamp = now()
        for other in list_releases(self.root):
            rid = other["id"]
            if rid == release or other["state"] == "unknown":
                continue
            if rid == old and other["state"] != "previous":
                new_state = "previous"
            elif rid != old and other["state"] in ("previous", "active"):
                new_state = "prepared"
            else:
                continue
            data = read_metadata(self.root, rid) or {}
            data.update(state=new_state, state_changed_at=stamp, reason=None)
            write_metadata(self.root, rid, data)
        meta.update(
            id=release,
            state="active",
            deployed_by=self.module.params["deployed_by"],
            deployed_at=stamp,
            state_changed_at=stamp,
            reason=None,
        )
        write_metadata(self.root, release, meta)
        if result["switched"]:
            switch_current(self.root, release)
        by = self.module.params["deployed_by"]
        self._log("activate", release=release, by=by, **{"from": old})
        return result

    def marked(self, release: str) -> dict[str, Any]:
        mark, reason = self.module.params["mark"], self.module.params["reason"]
        if not os.path.isdir(release_dir(self.root, release)):
            self.fail(f"Release {release} does not exist: no {release_dir(self.root, release)}.")
        meta = read_metadata(self.root, release) or {"id": release, "state": "unknown"}
        result = {"changed": False, "release": release}
        if meta.get("state") == mark and meta.get("reason") == reason:
            return result
        result["changed"] = True
        if not self.check:
            was = meta.get("state")
            meta.update(id=release, state=mark, reason=reason, state_changed_at=now())
            write_metadata(self.root, release, meta)
            self._log("mark", release=release, state=mark, reason=reason, from_state=was)
        return result

    def pruned(self, _release: str | None = None) -> dict[str, Any]:
        keep = self.module.params["keep"]
        if keep < 2:
            self.fail(f"keep is {keep}; keep at least 2 releases (the current one and one more).")
        removed = prune_selection(list_releases(self.root), keep)
        leftovers = leftover_removals(self.root)
        result = {"changed": bool(removed or leftovers), "removed": removed}
        if self.check or not result["changed"]:
            return result
        for release in removed:
            remove_release(self.root, release)
        for path in leftovers:
            finish_removal(path)
        self._log("prune", removed=removed, keep=keep)
        return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {
                "type": "str",
                "default": "list",
                "choices": ["list", "prepared", "active", "marked", "pruned"],
            },
            "root": {"type": "path", "default": "/opt/slipway"},
            "release": {"type": "str"},
            "metadata": {"type": "dict", "default": {}},
            "deployed_by": {"type": "str"},
            "allow_failed": {"type": "bool", "default": False},
            "mark": {"type": "str", "choices": ["failed", "rolled-back", "previous", "prepared"]},
            "reason": {"type": "str"},
            "keep": {"type": "int", "default": 5},
            "log_lines": {"type": "int", "default": 10},
        },
        required_if=[
            ("state", "prepared", ["release"]),
            ("state", "active", ["release"]),
            ("state", "marked", ["release", "mark"]),
        ],
        supports_check_mode=True,
    )
    state = module.params["state"]
    releases = Releases(module)
    runs: dict[str, Callable[..., dict[str, Any]]] = {
        "list": releases.listing,
        "prepared": releases.prepared,
        "active": releases.active,
        "marked": releases.marked,
        "pruned": releases.pruned,
    }
    run = runs[state]
    try:
        if state == "list" or module.check_mode or not os.path.isdir(releases.root):
            result = run(module.params["release"])
        else:
            with locked(releases.root):
                result = run(module.params["release"])
    except ReleaseError as exc:
        module.fail_json(msg=str(exc), root=releases.root)
    except OSError as exc:
        hint = " Run it as root (become: true)." if isinstance(exc, PermissionError) else ""
        module.fail_json(
            msg=f"app_release state={state} under {releases.root} failed: {exc}.{hint}"
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
