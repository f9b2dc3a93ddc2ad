#!/usr/bin/python
"""Restart one of the app's systemd units gracefully and wait until it is back."""

from __future__ import annotations

import json
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.slipway_http import HttpRequestError, get, poll

DOCUMENTATION = r"""
---
module: app_restart
short_description: Restart one app unit gracefully and wait until it is back
description:
  - Runs C(systemctl restart) on one unit of the app and waits until it is back, within
    O(deadline) seconds counted from the restart.
  - The stop is graceful by the units' own design. systemd sends SIGTERM; Gunicorn finishes its
    in-flight requests while the socket unit keeps queueing new connections, and Celery's soft
    shutdown lets running tasks finish. The time C(systemctl restart) takes (stop and start)
    is returned as RV(restart_seconds).
  - For O(kind=web), the unit is back when it runs a new main process and O(health_path)
    answers 200 over O(health_socket) and, with O(expect_release), reports that C(release_id).
  - For O(kind=worker) and O(kind=beat), the unit is back when it is active with a new main
    process that stays active, with the same PID, for O(settle) seconds.
  - The unit must be loaded (its unit file installed). C(systemctl restart) itself can take
    as long as the unit's C(TimeoutStopSec) plus its start allows.
version_added: "0.1.0"
author: slipway
options:
  unit:
    description: The systemd unit to restart, for example C(slipway-web.service).
    type: str
    required: true
  kind:
    description: What the unit runs, which decides how to tell it is back.
    type: str
    required: true
    choices: [web, worker, beat]
  health_socket:
    description: The web unit's Unix socket, to ask O(health_path) over. Required for C(web).
    type: path
  health_path:
    description: The path that must answer 200 (C(web)).
    type: str
    default: /health/live
  expect_release:
    description:
      - The release id the web unit must report on O(health_path) (C(web)); a response without
        C(release_id) does not pass.
    type: str
  deadline:
    description: Seconds from the start of the restart until the unit must be back.
    type: float
    default: 120
  settle:
    description: Seconds a worker or beat unit must stay active with its new PID.
    type: float
    default: 2
notes:
  - Supports check mode; it then reads the unit's state, reports C(changed=true) and restarts
    nothing.
  - Needs root (C(become=true)).
"""

EXAMPLES = r"""
- name: Restart the web service and wait until it serves the new release
  app_restart:
    unit: slipway-web.service
    kind: web
    health_socket: /run/slipway/web.sock
    expect_release: "{{ slipway_release_id }}"
    deadline: 90

- name: Restart a Celery worker (running tasks finish first)
  app_restart:
    unit: slipway-worker@default.service
    kind: worker
    deadline: 400
"""

RETURN = r"""
old_pid:
  description: The unit's main PID before the restart (0 when it was not running).
  returned: always
  type: int
new_pid:
  description: The unit's main PID after the restart (null in check mode).
  returned: always
  type: int
restart_seconds:
  description: Seconds C(systemctl restart) took (stop and start).
  returned: when the unit was restarted
  type: float
ready_seconds:
  description: Seconds from the end of C(systemctl restart) until the unit was back.
  returned: when the unit was restarted
  type: float
elapsed:
  description: Seconds from the start of the restart until the unit was back.
  returned: always
  type: float
release_id:
  description: The release the web unit reports on O(health_path), or null.
  returned: always
  type: str
checks:
  description: The waiting checks, oldest first (the last 20).
  returned: always
  type: list
  elements: dict
  sample: [{"at": 0.4, "main_pid": 4242, "active_state": "active", "sub_state": "running",
            "status": 200, "release_id": "0.1.0-3f9a2c1b", "error": null}]
"""

INTERVAL = 0.2  # seconds between two checks
KEEP_CHECKS = 20
_PROPS = ("LoadState", "ActiveState", "SubState", "MainPID")


class Restarter:
    def __init__(self, module: AnsibleModule, systemctl: str) -> None:
        self.module = module
        self.p = module.params
        self.systemctl = systemctl
        self.started = time.monotonic()

    def show(self) -> dict[str, Any]:
        cmd = [self.systemctl, "show", *(f"--property={name}" for name in _PROPS), self.p["unit"]]
        rc, out, err = self.module.run_command(cmd)
        if rc != 0:
            self.module.fail_json(
                msg=f"systemctl show {self.p['unit']} failed with exit code {rc}: "
                f"{err.strip() or out.strip()}"
            )
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        state = {name: props.get(name, "") for name in _PROPS}
        state["MainPID"] = int(state["MainPID"] or 0)
        return state

    def check(self, old_pid: int) -> dict[str, Any]:
        """One look at the unit (and its health, for web, once it runs a new process)."""
        state = self.show()
        entry: dict[str, Any] = {
            "at": round(time.monotonic() - self.started, 1),
            "main_pid": state["MainPID"],
            "active_state": state["ActiveState"],
            "sub_state": state["SubState"],
            "status": None,
            "release_id": None,
            "error": None,
        }
        if state["ActiveState"] != "active" or state["MainPID"] in (0, old_pid):
            entry["error"] = (
                f"{state['ActiveState']}/{state['SubState']} with MainPID {state['MainPID']}"
                f" (before the restart {old_pid})"
            )
        elif self.p["kind"] == "web":
            try:
                resp = get(
                    "http://localhost",
                    self.p["health_path"],
                    unix_socket=self.p["health_socket"],
                    timeout=5,
                )
            except HttpRequestError as exc:
                entry["error"] = str(exc)
                return entry
            entry["status"] = resp.status
            try:
                body = json.loads(resp.body)
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("release_id") is not None:
                entry["release_id"] = str(body["release_id"])
            entry["error"] = self._health_error(entry)
        return entry

    def _health_error(self, entry: dict[str, Any]) -> str | None:
        path, release = self.p["health_path"], self.p["expect_release"]
        if entry["status"] != 200:
            return f"{path} answered {entry['status']}"
        if release and entry["release_id"] is None:
            return f"{path} reports no release_id to compare with {release}"
        if release and entry["release_id"] != release:
            return f"{path} reports release {entry['release_id']}, not {release}"
        return None

    def settle(self, new_pid: int, checks: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Watch a worker/beat unit for `settle` seconds; the first check where it is no longer
        active with new_pid, or None when it stayed."""
        end = time.monotonic() + self.p["settle"]
        step = max(min(INTERVAL, self.p["settle"] / 4), 0.01)
        for _ in range(int(self.p["settle"] / step) + 2):
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(step, remaining))
            entry = self.check(0)
            checks.append(entry)
            if entry["active_state"] != "active" or entry["main_pid"] != new_pid:
                entry["error"] = (
                    f"did not stay up for {self.p['settle']:g} s: "
                    f"{entry['active_state']}/{entry['sub_state']} with MainPID "
                    f"{entry['main_pid']} (was {new_pid})"
                )
                return entry
        return None

    def fail(self, why: str, result: dict[str, Any], last: dict[str, Any] | None) -> None:
        unit = self.p["unit"]
        state = self.show()
        result["elapsed"] = round(time.monotonic() - self.started, 1)
        self.module.fail_json(
            msg=(
                f"{unit} is not back after its restart: {why}, after {result['elapsed']:.1f} s "
                f"(deadline {self.p['deadline']:g} s). It is {state['ActiveState']}/"
                f"{state['SubState']} with MainPID {state['MainPID']}. "
                f"Read `journalctl -u {unit} -n 50` on this host."
            ),
            unit=unit,
            state=state,
            last_check=last,
            **result,
        )

    def run(self) -> dict[str, Any]:
        p = self.p
        before = self.show()
        if before["LoadState"] != "loaded" and self.module.check_mode:
            self.module.exit_json(
                changed=True, old_pid=0, new_pid=None, elapsed=0.0, release_id=None, checks=[],
                msg=f"{p['unit']} is not installed yet (LoadState={before['LoadState']}): it "
                "would be restarted once it is.",
            )  # fmt: skip
        if before["LoadState"] != "loaded":
            self.module.fail_json(
                msg=f"{p['unit']} is not a loaded unit (LoadState={before['LoadState']}); "
                "is its unit file installed?"
            )
        old_pid = before["MainPID"]
        result: dict[str, Any] = {"changed": True, "old_pid": old_pid, "new_pid": None,
                                  "elapsed": 0.0, "release_id": None, "checks": []}  # fmt: skip
        if self.module.check_mode:
            return result
        self.started = time.monotonic()
        rc, out, err = self.module.run_command([self.systemctl, "restart", p["unit"]])
        restarted = time.monotonic()
        result["restart_seconds"] = round(restarted - self.started, 1)
        if rc != 0:
            self.fail(f"systemctl restart exited {rc}: {err.strip() or out.strip()}", result, None)
        outcome = poll(
            lambda: self.check(old_pid),
            lambda entry: entry["error"] is None,
            deadline=max(p["deadline"] - result["restart_seconds"], 0),
            interval=INTERVAL,
        )
        checks: list[dict[str, Any]] = outcome.attempts
        last = checks[-1]
        result.update(new_pid=last["main_pid"], release_id=last["release_id"])
        if not outcome.ok:
            result["checks"] = checks[-KEEP_CHECKS:]
            self.fail(last["error"], result, last)
        if p["kind"] != "web":
            broke = self.settle(last["main_pid"], checks)
            if broke is not None:
                result["checks"] = checks[-KEEP_CHECKS:]
                self.fail(broke["error"], result, broke)
        now = time.monotonic()
        result.update(
            checks=checks[-KEEP_CHECKS:],
            ready_seconds=round(now - restarted, 1),
            elapsed=round(now - self.started, 1),
        )
        return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "unit": {"type": "str", "required": True},
            "kind": {"type": "str", "required": True, "choices": ["web", "worker", "beat"]},
            "health_socket": {"type": "path"},
            "health_path": {"type": "str", "default": "/health/live"},
            "expect_release": {"type": "str"},
            "deadline": {"type": "float", "default": 120},
            "settle": {"type": "float", "default": 2},
        },
        required_if=[("kind", "web", ["health_socket"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["deadline"] < 0 or p["settle"] < 0 or not p["health_path"].startswith("/"):
        module.fail_json(
            msg="deadline and settle must be 0 or more and health_path must start with / "
            f"(got deadline={p['deadline']}, settle={p['settle']}, "
            f"health_path={p['health_path']!r})."
        )
    systemctl = module.get_bin_path("systemctl", required=True)
    module.exit_json(**Restarter(module, systemctl).run())


if __name__ == "__main__":
    main()
