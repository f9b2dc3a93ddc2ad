#!/usr/bin/python
"""Take, refresh, release or read the fleet lock: one JSON file on one host."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: app_lock
short_description: Take, release or read the fleet lock file that serializes deploys
description:
  - Keeps one lock file, JSON, on the host it runs on (run it on one host for the whole fleet,
    for example with C(run_once) and C(delegate_to)), so that two deploys or maintenance runs
    never overlap.
  - O(state=present) takes the lock. The file is written to a temporary name and linked to
    O(path), so creation is exclusive and a reader never sees half a file; every change is
    made under an exclusive C(flock) on the lock's directory, so two runs that race to take
    a free or stale lock cannot both win. The directory is created (mode 0755) when missing.
  - Taken again with the same O(token), the lock is refreshed (its C(refreshed_at) moves on)
    and C(changed=false). Held by another token, it is taken over when its age since
    C(refreshed_at) is above its own C(ttl) (C(broke_stale=true)) or when O(break_lock=true)
    (C(broke=true)); otherwise the task fails and says who holds it, for what and since when.
  - O(state=absent) removes the lock only when it holds O(token); another run's lock is left
    alone with a warning. O(state=query) reads it and changes nothing.
version_added: "0.1.0"
author: slipway
options:
  path:
    description: The lock file, for example C(/var/lib/slipway/fleet.lock).
    type: path
    required: true
  state:
    description: Take (C(present)), release (C(absent)) or read (C(query)) the lock.
    type: str
    choices: [present, absent, query]
    default: present
  holder:
    description: Who takes the lock, for the refusal message of others (for example
      C(alice@laptop)).
    type: str
    default: unknown
  operation:
    description: What the lock is taken for (for example C(deploy 0.1.0-3f9a2c1b)).
    type: str
    default: unknown
  token:
    description: A value unique to this run (for example a UUID made once per playbook run);
      required for C(present) and C(absent).
    type: str
  ttl:
    description: Seconds after its last refresh that the lock written now counts as stale,
      when others may take it over.
    type: int
    default: 3600
  break_lock:
    description: Take the lock even when another run holds it and it is not stale.
    type: bool
    default: false
  hint:
    description: A sentence appended to the refusal message (what to do about it).
    type: str
    default: ""
notes:
  - Supports check mode; it then reads the lock and reports what it would do.
"""

EXAMPLES = r"""
- name: Take the fleet lock for this deploy
  app_lock:
    path: /var/lib/slipway/fleet.lock
    holder: "{{ lookup('env', 'USER') }}@{{ lookup('pipe', 'hostname') }}"
    operation: "deploy {{ slipway_release_id }}"
    token: "{{ slipway_run_token }}"
    ttl: 1800
    hint: "Wait for it, or run again with -e slipway_break_lock=true if that run is gone."
    break_lock: "{{ slipway_break_lock | default(false) }}"
  run_once: true
  delegate_to: "{{ groups['app'][0] }}"

- name: Release the fleet lock
  app_lock:
    path: /var/lib/slipway/fleet.lock
    token: "{{ slipway_run_token }}"
    state: absent
  run_once: true
  delegate_to: "{{ groups['app'][0] }}"
"""

RETURN = r"""
lock:
  description: The lock's content after the task (or as it would be in check mode); null when
    there is none.
  returned: always
  type: dict
  sample: {"holder": "alice@laptop", "operation": "deploy 0.1.0-3f9a2c1b", "token": "5d1c",
           "acquired_at": 1796198400.0, "acquired_at_iso": "2026-12-02T08:00:00+00:00",
           "refreshed_at": 1796198400.0, "refreshed_at_iso": "2026-12-02T08:00:00+00:00",
           "ttl": 3600}
held:
  description: Whether a lock file exists (state=query), or is held by this token after the
    task (present, absent).
  returned: always
  type: bool
age:
  description: Seconds since the lock's last refresh, as read before the task; null when none.
  returned: always
  type: float
stale:
  description: Whether the lock read before the task was older than its own ttl.
  returned: always
  type: bool
broke_stale:
  description: Whether a stale lock of another run was taken over.
  returned: when state is present
  type: bool
broke:
  description: Whether a live lock of another run was taken over because of O(break_lock).
  returned: when state is present
  type: bool
previous:
  description: The lock of another run that was taken over, or null.
  returned: when state is present
  type: dict
held_by:
  description: Who holds the lock that O(state=absent) left alone (another token), or null.
  returned: when state is absent
  type: str
"""


class LockHeld(Exception):
    """Another run holds the lock and it is neither stale nor to be broken."""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class FleetLock:
    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = os.path.abspath(path)
        self.parent = os.path.dirname(self.path)
        self.clock = clock

    def read(self) -> dict[str, Any] | None:
        """The lock's content, None when there is no lock. An unreadable file is a lock held
        by nobody known since the file's modification time (so it goes stale and is shown)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                raw = handle.read()
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None
        try:
            content = json.loads(raw)
            if isinstance(content, dict) and isinstance(content.get("refreshed_at"), int | float):
                return content
        except ValueError:
            pass
        return {"holder": "an unreadable lock file", "operation": "unknown", "token": None,
                "refreshed_at": mtime, "refreshed_at_iso": _iso(mtime), "ttl": None}  # fmt: skip

    def age(self, content: dict[str, Any]) -> float:
        return round(self.clock() - float(content["refreshed_at"]), 1)

    def stale(self, content: dict[str, Any], default_ttl: int) -> bool:
        return self.age(content) > float(content.get("ttl") or default_ttl)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """An exclusive flock on the lock's directory for one read-decide-write step."""
        fd = os.open(self.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _write(self, content: dict[str, Any], replace: bool) -> None:
        """Write to a private temporary name, then link it to the lock's path (exclusive:
        FileExistsError when a lock appeared) or rename over it (replace)."""
        tmp = os.path.join(
            self.parent, f".{os.path.basename(self.path)}.{os.getpid()}.{os.urandom(6).hex()}"
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(content, handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(tmp, self.path)
            else:
                os.link(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def acquire(self, p: dict[str, Any], check: bool) -> dict[str, Any]:
        now = self.clock()
        mine = {"holder": p["holder"], "operation": p["operation"], "token": p["token"],
                "acquired_at": now, "acquired_at_iso": _iso(now),
                "refreshed_at": now, "refreshed_at_iso": _iso(now), "ttl": p["ttl"]}  # fmt: skip
        result: dict[str, Any] = {"changed": True, "held": True, "lock": mine, "age": None,
                                  "stale": False, "broke_stale": False, "broke": False,
                                  "previous": None}  # fmt: skip
        if not os.path.isdir(self.parent):
            if not check:
                os.makedirs(self.parent, mode=0o755, exist_ok=True)
                os.chmod(self.parent, 0o755)
            else:
                return result
        with self.guard():
            current = self.read()
            if current is None:
                if not check:
                    self._write(mine, replace=False)
                return result
            result.update(age=self.age(current), stale=self.stale(current, p["ttl"]))
            if current.get("token") == p["token"]:
                mine.update(acquired_at=current.get("acquired_at", now),
                            acquired_at_iso=current.get("acquired_at_iso", _iso(now)))  # fmt: skip
                result["changed"] = False
            elif result["stale"] or p["break_lock"]:
                result.update(previous=current, broke_stale=result["stale"])
                result["broke"] = not result["stale"]
            else:
                raise LockHeld(self.refusal(current, p))
            if not check:
                self._write(mine, replace=True)
            return result

    def release(self, p: dict[str, Any], check: bool) -> dict[str, Any]:
        result: dict[str, Any] = {"changed": False, "held": False, "lock": None, "age": None,
                                  "stale": False, "held_by": None}  # fmt: skip
        if not os.path.isdir(self.parent):
            return result
        with self.guard():
            current = self.read()
            if current is None:
                return result
            result.update(age=self.age(current), stale=self.stale(current, p["ttl"]))
            if current.get("token") != p["token"]:
                result.update(lock=current, held_by=current.get("holder"))
                return result
            result["changed"] = True
            if not check:
                os.unlink(self.path)
            return result

    def query(self, p: dict[str, Any]) -> dict[str, Any]:
        current = self.read()
        if current is None:
            return {"changed": False, "held": False, "lock": None, "age": None, "stale": False}
        return {"changed": False, "held": True, "lock": current, "age": self.age(current),
                "stale": self.stale(current, p["ttl"])}  # fmt: skip

    def refusal(self, current: dict[str, Any], p: dict[str, Any]) -> str:
        ttl = current.get("ttl") or p["ttl"]
        since = current.get("acquired_at_iso") or current.get("refreshed_at_iso")
        msg = (
            f"The fleet lock {self.path} on {socket.gethostname()} is held by "
            f"{current.get('holder')} for {current.get('operation')} since {since} "
            f"({self.age(current):.0f} s ago; it expires after {ttl} s)."
        )
        return f"{msg} {p['hint']}".strip()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {
                "type": "str",
                "choices": ["present", "absent", "query"],
                "default": "present",
            },
            "holder": {"type": "str", "default": "unknown"},
            "operation": {"type": "str", "default": "unknown"},
            "token": {"type": "str"},
            "ttl": {"type": "int", "default": 3600},
            "break_lock": {"type": "bool", "default": False},
            "hint": {"type": "str", "default": ""},
        },
        required_if=[("state", "present", ["token"]), ("state", "absent", ["token"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["ttl"] < 1:
        module.fail_json(msg=f"ttl is {p['ttl']}; a lock needs a ttl of 1 second or more.")
    lock = FleetLock(p["path"])
    try:
        if p["state"] == "query":
            result = lock.query(p)
        elif p["state"] == "absent":
            result = lock.release(p, module.check_mode)
            if result["held_by"] is not None:
                module.warn(
                    f"The fleet lock {lock.path} is held by {result['held_by']} for "
                    f"{result['lock'].get('operation')} (another token): left in place."
                )
        else:
            result = lock.acquire(p, module.check_mode)
    except LockHeld as exc:
        module.fail_json(msg=str(exc), held=True, lock=lock.read())
    except OSError as exc:
        action = {"present": "Taking", "absent": "Releasing", "query": "Reading"}[p["state"]]
        module.fail_json(msg=f"{action} the fleet lock {lock.path} failed: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
