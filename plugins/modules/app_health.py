#!/usr/bin/python
"""Poll the app's health endpoints until they pass (or a deadline), over TCP or a Unix socket."""

from __future__ import annotations

import json
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.slipway_http import HttpRequestError, get, poll, where

DOCUMENTATION = r"""
---
module: app_health
short_description: Wait until the app's health endpoints answer, for the expected release
description:
  - Requests every path of O(paths) (by default C(/health/live) and C(/health/ready)) and
    repeats every O(interval) seconds until one round passes O(successes) times in a row, or
    until O(deadline) seconds have gone by.
  - A round passes when every path answers O(expect_status) and, when O(expect_release) is
    given, every response whose JSON names a C(release_id) names that one and at least one
    response names it (a path that reports no release cannot prove the release).
  - The request goes to O(url), or over the Unix socket O(unix_socket) when that is set (for
    example Gunicorn's own socket, behind nginx); the URL's host is then only the Host header.
  - Read-only. It never changes anything, so it runs in check mode too and reports
    C(changed=false).
  - An unhealthy app fails the task with the failing check, unless O(fail_on_unhealthy=false),
    which returns C(healthy=false) as data for the playbook to decide.
version_added: "0.1.0"
author: slipway
options:
  url:
    description:
      - Scheme and host (optionally port and a path prefix) of the app, for example
        C(https://app.example.org). The host is sent as the Host header.
    type: str
    default: http://localhost
  unix_socket:
    description: A Unix socket to send the requests over (plain HTTP) instead of TCP.
    type: path
  paths:
    description: The paths that must all pass, each starting with C(/).
    type: list
    elements: str
    default: [/health/live, /health/ready]
  expect_status:
    description: The HTTP status every path must answer.
    type: int
    default: 200
  expect_release:
    description:
      - The release id the app must report. Every response whose JSON has C(release_id) must
        match it, and at least one must have it.
    type: str
  deadline:
    description: Seconds to keep polling before giving up (at least one round always runs).
    type: float
    default: 60
  interval:
    description: Seconds between two rounds.
    type: float
    default: 0.5
  timeout:
    description: Seconds one request may take.
    type: float
    default: 5
  successes:
    description: Consecutive passing rounds required.
    type: int
    default: 1
  validate_certs:
    description: Verify the server's TLS certificate and host name (https only).
    type: bool
    default: true
  ca_path:
    description: A PEM file of CA certificates to verify the server with (https only).
    type: path
  fail_on_unhealthy:
    description: Fail the task when the app is not healthy by the deadline; when false, return
      C(healthy=false) instead.
    type: bool
    default: true
notes:
  - Supports check mode; the checks run in check mode too, since they change nothing.
"""

EXAMPLES = r"""
- name: Wait until this host's Gunicorn serves the new release, over its socket
  app_health:
    unix_socket: /run/slipway/gunicorn.sock
    expect_release: "{{ slipway_release_id }}"
    deadline: 90
    successes: 3

- name: Read the public health of the site for a status page
  app_health:
    url: https://app.example.org
    paths: [/health/ready]
    deadline: 0
    fail_on_unhealthy: false
  register: __app_health
"""

RETURN = r"""
healthy:
  description: Whether the checks passed before the deadline.
  returned: always
  type: bool
elapsed:
  description: Seconds spent polling.
  returned: always
  type: float
attempts:
  description: Rounds run (each round requests every path).
  returned: always
  type: int
release_id:
  description: The last release id any response reported, or null.
  returned: always
  type: str
  sample: 0.1.0-3f9a2c1b
checks:
  description: One entry per path, from the last round.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The path requested.
      type: str
    status:
      description: The HTTP status, or null when no answer came.
      type: int
    latency_ms:
      description: Milliseconds from connect to the body read, or null.
      type: float
    release_id:
      description: The release id of the JSON body, or null.
      type: str
    body:
      description: The parsed JSON body, or its text cut at 2 KB.
      type: raw
    error:
      description: Why no answer came, or null.
      type: str
failed_check:
  description: The first failing path of the last round and why, or null when healthy.
  returned: always
  type: str
  sample: "/health/ready answered 503: migrations: database is behind this release"
"""

BODY_TEXT_LIMIT = 2048


def parse_body(body: bytes) -> Any:
    """The body as JSON when it is JSON, else as text cut at 2 KB."""
    try:
        return json.loads(body)
    except ValueError:
        return body[:BODY_TEXT_LIMIT].decode("utf-8", errors="replace")


def _why(body: Any) -> str:
    """What a failing answer says about itself: the failed readiness checks, or the text."""
    if isinstance(body, dict):
        checks = body.get("checks")
        checks = checks if isinstance(checks, dict) else {}
        failed = body.get("failed")
        reasons = []
        for name in failed if isinstance(failed, list) else []:
            detail = checks.get(name)
            detail = detail if isinstance(detail, dict) else {}
            reasons.append(f"{name}: {detail.get('error') or detail.get('status') or 'failed'}")
        if reasons:
            return "; ".join(reasons)
        body = json.dumps(body, sort_keys=True)
    return " ".join(str(body).split())[:200] or "an empty body"


class HealthChecker:
    def __init__(self, params: dict[str, Any]) -> None:
        self.p = params

    def check(self, path: str) -> dict[str, Any]:
        p = self.p
        entry: dict[str, Any] = {
            "path": path,
            "status": None,
            "latency_ms": None,
            "release_id": None,
            "body": None,
            "error": None,
        }
        try:
            resp = get(
                p["url"],
                path,
                unix_socket=p["unix_socket"],
                timeout=p["timeout"],
                validate_certs=p["validate_certs"],
                ca_path=p["ca_path"],
            )
        except HttpRequestError as exc:
            entry["error"] = str(exc)
            return entry
        body = parse_body(resp.body)
        entry.update(status=resp.status, latency_ms=resp.latency_ms, body=body)
        if isinstance(body, dict) and body.get("release_id") is not None:
            entry["release_id"] = str(body["release_id"])
        return entry

    def round(self) -> list[dict[str, Any]]:
        return [self.check(path) for path in self.p["paths"]]

    def failure(self, checks: list[dict[str, Any]]) -> str | None:
        """Why this round fails (the first failing path), or None when it passes."""
        expect, release = self.p["expect_status"], self.p["expect_release"]
        for c in checks:
            if c["error"]:
                return f"{c['path']} did not answer: {c['error']}"
            if c["status"] != expect:
                return f"{c['path']} answered {c['status']}: {_why(c['body'])}"
            if release and c["release_id"] is not None and c["release_id"] != release:
                return f"{c['path']} reports release {c['release_id']}, not {release}"
        if release and all(c["release_id"] is None for c in checks):
            paths = ", ".join(c["path"] for c in checks)
            return f"no response of {paths} reports a release_id to compare with {release}"
        return None


def run(module: AnsibleModule, checker: HealthChecker) -> dict[str, Any]:
    p = module.params
    outcome = poll(
        checker.round,
        lambda checks: checker.failure(checks) is None,
        deadline=p["deadline"],
        interval=p["interval"],
        successes=p["successes"],
    )
    last: list[dict[str, Any]] = outcome.attempts[-1]
    seen = [c["release_id"] for r in outcome.attempts for c in r if c["release_id"] is not None]
    failed_check = None
    if not outcome.ok:
        failed_check = checker.failure(last)
        if failed_check is None:
            passes = 0
            for r in reversed(outcome.attempts):
                if checker.failure(r) is not None:
                    break
                passes += 1
            failed_check = (
                f"{passes} consecutive passing rounds of the {p['successes']} required "
                "before the deadline"
            )
    return {
        "changed": False,
        "healthy": outcome.ok,
        "elapsed": outcome.elapsed,
        "attempts": len(outcome.attempts),
        "release_id": seen[-1] if seen else None,
        "checks": last,
        "failed_check": failed_check,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "default": "http://localhost"},
            "unix_socket": {"type": "path"},
            "paths": {
                "type": "list",
                "elements": "str",
                "default": ["/health/live", "/health/ready"],
            },
            "expect_status": {"type": "int", "default": 200},
            "expect_release": {"type": "str"},
            "deadline": {"type": "float", "default": 60},
            "interval": {"type": "float", "default": 0.5},
            "timeout": {"type": "float", "default": 5},
            "successes": {"type": "int", "default": 1},
            "validate_certs": {"type": "bool", "default": True},
            "ca_path": {"type": "path"},
            "fail_on_unhealthy": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    bad_paths = [path for path in p["paths"] if not path.startswith("/")]
    if not p["paths"] or bad_paths:
        module.fail_json(
            msg=f"paths must be a non-empty list of paths starting with /: {bad_paths}"
        )
    if p["successes"] < 1 or p["timeout"] <= 0 or p["deadline"] < 0 or p["interval"] < 0:
        module.fail_json(
            msg="successes must be 1 or more, timeout above 0, deadline and interval 0 or more "
            f"(got successes={p['successes']}, timeout={p['timeout']}, "
            f"deadline={p['deadline']}, interval={p['interval']})."
        )
    result = run(module, HealthChecker(p))
    if not result["healthy"] and p["fail_on_unhealthy"]:
        expected = f" Expected release {p['expect_release']}." if p["expect_release"] else ""
        module.fail_json(
            msg=(
                f"The app at {where(p['url'], p['unix_socket'])} is not healthy after "
                f"{result['attempts']} attempts in {result['elapsed']:.1f} s "
                f"(deadline {p['deadline']:g} s): {result['failed_check']}.{expected}"
            ),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
