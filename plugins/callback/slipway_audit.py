"""One JSON audit line per deploy, restart or rollback run.

Kamal writes an audit line for every deploy; this callback does the same for the
playbooks that move traffic or releases. It never decides anything: a failure inside
the callback is shown as a warning and the run goes on.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ansible import context
from ansible.plugins.callback import CallbackBase
from pythonjsonlogger.json import JsonFormatter

DOCUMENTATION = """
    name: slipway_audit
    type: notification
    short_description: One JSON audit line per deploy/restart/rollback run
    description:
      - Writes one JSON line per run of an audited playbook (python-json-logger's JsonFormatter)
        with who ran it, from where, the target release given with C(-e), the release each host
        moved from and to (results of C(app_release) with C(state=active) and of C(app_restart)),
        the result, the failed hosts with their first failure, the duration and the events of
        tasks that set the task var C(slipway_audit_event).
      - Prints one summary line at the end of the run.
      - Runs of other playbooks are not audited.
    requirements:
      - enable in ansible.cfg (C(callbacks_enabled = slipway_audit))
    options:
      log_path:
        description: File the JSON lines are appended to (created C(0640), its directory C(0750)).
        type: path
        default: ~/.local/state/slipway/audit.log
        env:
          - name: SLIPWAY_AUDIT_LOG
        ini:
          - section: callback_slipway_audit
            key: log_path
      playbooks:
        description: Playbooks that are audited, matched on the file's basename.
        type: list
        elements: str
        default: [deploy.yml, restart.yml, rollback.yml]
        env:
          - name: SLIPWAY_AUDIT_PLAYBOOKS
        ini:
          - section: callback_slipway_audit
            key: playbooks
"""

# Extra vars (-e) that name the target of a run.
TARGET_VARS = ("release", "rollback_to")
EVENT_VAR = "slipway_audit_event"
MSG_LIMIT = 500

F = TypeVar("F", bound=Callable[..., None])


def _never_raise(method: F) -> F:
    """A hook that fails shows a warning instead of breaking the run."""

    @functools.wraps(method)
    def wrapper(self: CallbackModule, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # the audit must never break a deploy
            self._display.warning(f"slipway_audit: {method.__name__} failed: {exc!r}")

    return wrapper  # type: ignore[return-value]


def _parts(result: Any) -> tuple[str, Any, dict[str, Any]]:
    """(host name, task, result dict) of a callback task result."""
    host = getattr(result, "host", None) or result._host
    task = getattr(result, "task", None) or result._task
    data = getattr(result, "result", None)
    if data is None:
        data = result._result
    return host.get_name(), task, data


def _plain(value: Any) -> Any:
    """Ansible's tagged strings and containers as plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def _who() -> str:
    user = os.environ.get("SUDO_USER")
    if not user:
        try:
            user = os.getlogin()
        except OSError:
            user = getpass.getuser()
    return user


def _span(values: list[str | None]) -> str:
    """One value for all hosts, or the distinct ones joined; '?' when nothing is known."""
    seen = sorted({v for v in values if v})
    return ",".join(seen) if seen else "?"


class CallbackModule(CallbackBase):
    """Audit line per deploy/restart/rollback run."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "slipway_audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._audited = False
        self._playbook = ""
        self._action = ""
        self._started = 0.0
        self._extra: dict[str, Any] = {}
        self._hosts: set[str] = set()
        self._releases: dict[str, dict[str, str | None]] = {}
        self._failures: dict[str, dict[str, str]] = {}
        self._events: list[dict[str, Any]] = []

    # -- run start ---------------------------------------------------------------

    @_never_raise
    def v2_playbook_on_start(self, playbook: Any) -> None:
        path = str(getattr(playbook, "_file_name", "") or "")
        wanted = {os.path.basename(str(p)) for p in (self.get_option("playbooks") or [])}
        name = os.path.basename(path)
        self._audited = name in wanted
        self._playbook = os.path.abspath(path) if path else ""
        self._action = name.removesuffix(".yml").removesuffix(".yaml")
        self._started = time.time()

    @_never_raise
    def v2_playbook_on_play_start(self, play: Any) -> None:
        if not self._audited or self._extra:
            return
        try:
            extra = play.get_variable_manager().extra_vars
        except AttributeError:
            return  # not reachable: the line goes without them
        self._extra = {k: _plain(extra[k]) for k in TARGET_VARS if k in extra}

    # -- task results --------------------------------------------------------------

    @_never_raise
    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result)

    @_never_raise
    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result)
        if self._audited and not ignore_errors:
            self._failure(result)

    @_never_raise
    def v2_runner_on_unreachable(self, result: Any) -> None:
        if self._audited:
            self._failure(result)

    def _record(self, result: Any) -> None:
        if not self._audited:
            return
        host, task, data = _parts(result)
        self._hosts.add(host)
        action = str(getattr(task, "action", "") or "").rsplit(".", 1)[-1]
        if action in ("app_release", "app_restart"):
            # a loop's results come in one result, item by item
            for item in data.get("results") or [data]:
                if isinstance(item, dict) and not item.get("failed"):
                    self._moved(host, action, item)
        task_vars = getattr(task, "vars", None) or {}
        if EVENT_VAR in task_vars:
            self._events.append(
                {
                    "time": time.time(),
                    "host": host,
                    "event": _plain(task_vars[EVENT_VAR]),
                    "task": task.get_name(),
                }
            )

    def _moved(self, host: str, action: str, data: dict[str, Any]) -> None:
        """From: the release a host ran before its first switch; to: the last one it got."""
        if action == "app_release":
            args = (data.get("invocation") or {}).get("module_args") or {}
            if args.get("state") != "active" or not data.get("release"):
                return
            before, after = _plain(data.get("previous")), _plain(data["release"])
        elif data.get("release_id"):
            before = after = _plain(data["release_id"])  # a restart: runs what it ran
        else:
            return
        moved = self._releases.setdefault(host, {"from": before, "to": after})
        if action == "app_release" or not moved["to"]:
            moved["to"] = after

    def _failure(self, result: Any) -> None:
        host, task, data = _parts(result)
        self._hosts.add(host)
        if host in self._failures:
            return  # the first failure says what went wrong
        msg = data.get("msg") or data.get("stderr") or data.get("reason") or "failed"
        self._failures[host] = {"task": task.get_name(), "msg": str(msg)[:MSG_LIMIT]}

    # -- run end -------------------------------------------------------------------

    @_never_raise
    def v2_playbook_on_stats(self, stats: Any) -> None:
        if not self._audited:
            return
        failed = set(stats.failures) | set(stats.dark)
        hosts = sorted(self._hosts | set(stats.processed))
        duration = round(time.time() - self._started, 1)
        moved = [self._releases.get(h, {}) for h in hosts]
        line = {
            "action": self._action,
            "playbook": self._playbook,
            "user": _who(),
            "controller": socket.gethostname(),
            "extra_vars": self._extra,
            "from": _span([m.get("from") for m in moved]),
            "to": _span([m.get("to") for m in moved]),
            "releases": {h: self._releases[h] for h in hosts if h in self._releases},
            "hosts": hosts,
            "result": "failed" if failed else "ok",
            "check_mode": bool(context.CLIARGS.get("check", False)),
            "failed": {
                h: self._failures.get(h, {"task": "", "msg": "unreachable or failed"})
                for h in sorted(failed)
            },
            "duration_s": duration,
            "events": self._events,
        }
        path = Path(self.get_option("log_path")).expanduser()
        self._write(path, line)
        self._display.display(
            f"audit: {self._action} {line['from']} -> {line['to']} on {len(hosts)} host(s): "
            f"{line['result']}{' (check mode)' if line['check_mode'] else ''} in {duration} s "
            f"(log: {path})"
        )

    def _write(self, path: Path, line: dict[str, Any]) -> None:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
            os.chmod(path, 0o640)
        logger = logging.getLogger("slipway.audit")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(JsonFormatter("%(message)s", timestamp=True))
        logger.addHandler(handler)
        try:
            logger.info("slipway audit", extra=line)
        finally:
            logger.removeHandler(handler)
            handler.close()
