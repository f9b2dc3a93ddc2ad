"""The processes and requests of a trial: ansible-playbook runs (spawned, waited for with a
timeout, their output and audit line read back), ad-hoc modules, the probe, the load
generator around a block, and requests to the app through the lb. Under --dry-run each
prints its command and runs nothing."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tools.loadgen import _HTTPConnection, _HTTPSConnection, parse_addr

from .checks import ad_hoc_result
from .config import (
    AD_HOC_TIMEOUT_S,
    CLIENT_TIMEOUT_S,
    DRY_LOCK,
    DRY_PROBE,
    LOAD_MARGIN_S,
    PROBE,
    PROBE_TIMEOUT_S,
    TrialError,
)


def playbook_argv(
    binary: str, playbook: str, inventory: str, limit: str | None, extra: dict[str, str]
) -> list[str]:
    argv = [binary, "-i", inventory, playbook, *(["--limit", limit] if limit else [])]
    return argv + (["-e", json.dumps(extra, sort_keys=True)] if extra else [])


def trial_env(project: Path, out: Path, base: dict[str, str]) -> dict[str, str]:
    """Every run's environment; this interpreter's bin goes last on PATH, as a fallback."""
    path = [p for p in base.get("PATH", "").split(os.pathsep) if p]
    path += [d for d in [str(Path(sys.executable).parent)] if d not in path]
    return {
        **base,
        "PATH": os.pathsep.join(path),
        "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
        "SLIPWAY_AUDIT_LOG": str(out / "audit.log"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",  # Molecule sets it to 1, and it wins over NOCOLOR
        "PYTHONUNBUFFERED": "1",
    }


def load_argv(o: argparse.Namespace, step: str, out: Path) -> list[str]:
    """tools.loadgen for one step, bounded by the playbook's timeout plus margins."""
    options = {
        "--url": o.url,
        "--connect": o.connect,
        "--cacert": o.cacert,
        "--concurrency": o.concurrency,
        "--rate": o.rate,
        "--max-requests": 1_000_000,
        "--duration": min(1800, int(o.playbook_timeout + 4 * LOAD_MARGIN_S + 30)),
        "--stop-file": out / f"{step}-stop",
        "--out": out / f"{step}-requests.jsonl",
        "--summary": out / f"{step}-load.json",
        "--timeout": CLIENT_TIMEOUT_S,
    }
    pairs = [(k, str(v)) for k, v in options.items() if v is not None]
    # Steady at --rate: what a restart held back is not sent as one burst afterwards (that
    # burst would meet nginx's per-address limit, a 429 that says nothing about the deploy).
    flags = ["--no-catch-up"] if o.rate else []
    return [sys.executable, "-m", "tools.loadgen", *(x for pair in pairs for x in pair), *flags]


@dataclass
class Run:
    """One ansible-playbook run: its log, its process, and once waited for, its exit status,
    seconds, output and audit line."""

    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None  # None: --dry-run
    started: float
    audit_mark: int
    rc: int = 0
    seconds: float = 0.0
    output: str = ""
    audit: dict[str, Any] | None = None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def figures(self) -> dict[str, Any]:
        return {
            "playbook": Path(self.argv[3]).name,
            "rc": self.rc,
            "seconds": round(self.seconds, 1),
            "log": str(self.log),
        }


class Runner:
    """Runs the trial's commands from the repository root in the trial's environment; keeps
    the newest probe (`last`) and the playbooks started in the background (`spawned`)."""

    def __init__(self, o: argparse.Namespace) -> None:
        self.o, self.dry = o, bool(o.dry_run)
        self.project, self.out = Path(o.project).resolve(), Path(o.out).resolve()
        self.env = trial_env(self.project, self.out, dict(os.environ))
        self.kw: dict[str, Any] = {"cwd": self.project, "env": self.env}
        found = shutil.which("ansible-playbook", path=self.env["PATH"])
        if not found and not self.dry:
            raise TrialError(
                "ansible-playbook is not on PATH: put the venv's bin first on PATH "
                "(PATH=.venv/bin:$PATH) or run with .venv/bin/python"
            )
        self.playbook_bin = found or "ansible-playbook"
        self.ansible_bin = str(Path(self.playbook_bin).with_name("ansible"))
        self.last: dict[str, Any] = {}  # the newest probe
        self.spawned: list[Run] = []

    def say(self, line: str) -> None:
        """A command or a note: on stdout for --dry-run, else on stderr as progress."""
        if self.dry:
            print(line, flush=True)
        else:
            print(f"release_trial: {line}", file=sys.stderr, flush=True)

    def pause(self, seconds: float) -> None:
        if not self.dry:
            time.sleep(seconds)

    def audit_lines(self) -> list[str]:
        path = self.out / "audit.log"
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def shell(self, argv: list[str]) -> str:
        """A command as a shell line: directory and the environment that matters, then argv."""
        env = (f"{k}={self.env[k]}" for k in ("ANSIBLE_CONFIG", "SLIPWAY_AUDIT_LOG"))
        return f"cd {self.project} && {shlex.join(env)} {shlex.join(argv)}"

    def spawn(self, name: str, playbook: str, extra: dict[str, str] | None = None) -> Run:
        argv = playbook_argv(
            self.playbook_bin, playbook, self.o.inventory, self.o.limit, extra or {}
        )
        log = self.out / f"{name}.log"
        self.say(f"{self.shell(argv)} > {log} 2>&1")
        if self.dry:
            return Run(argv, log, None, time.monotonic(), 0)
        with log.open("w", encoding="utf-8") as handle:
            handle.write(f"$ cd {self.project} && {shlex.join(argv)}\n")
            handle.flush()
            # a session of its own: a timeout ends the playbook and everything it started
            proc = subprocess.Popen(argv, **self.kw, stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        run = Run(argv, log, proc, time.monotonic(), len(self.audit_lines()))
        self.spawned.append(run)
        return run

    def wait(self, run: Run, timeout: float | None = None) -> Run:
        """Wait for the playbook (its timeout counted from its start), then read its output
        and its audit line; a playbook past its timeout is killed and gets rc 124."""
        if run.proc is None or run.output:
            return run
        limit = timeout or self.o.playbook_timeout
        try:
            run.rc = run.proc.wait(timeout=max(1.0, limit - (time.monotonic() - run.started)))
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):  # the playbook and its children
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.proc.wait(timeout=15)
                    break
            run.rc = 124
            with run.log.open("a", encoding="utf-8") as handle:
                handle.write(f"\nrelease_trial: killed after {limit:.0f} s\n")
        run.seconds = time.monotonic() - run.started
        run.output = run.log.read_text(encoding="utf-8", errors="replace")
        lines = [json.loads(x) for x in self.audit_lines()[run.audit_mark :] if x.strip()]
        mine = [x for x in lines if x.get("action") == Path(run.argv[3]).stem]
        ok = [x for x in mine if (x.get("result") == "ok") == (run.rc == 0)]
        run.audit = (ok or mine or [None])[-1]
        return run

    def run(self, name: str, playbook: str, extra: dict[str, str] | None = None) -> Run:
        return self.wait(self.spawn(name, playbook, extra))

    def probe(self, label: str) -> dict[str, Any]:
        path = self.out / f"probe-{label}.json"
        run = self.spawn(f"probe-{label}", PROBE, {"trial_probe_out": str(path)})
        if self.dry:
            self.last = {**DRY_PROBE, "label": label}
            return self.last
        path.unlink(missing_ok=True)
        if self.wait(run, PROBE_TIMEOUT_S).rc != 0 or not path.exists():
            raise TrialError(f"the probe (tools/trial_probe.yml) exited {run.rc}; read {run.log}")
        self.last = {**json.loads(path.read_text(encoding="utf-8")), "label": label}
        return self.last

    def ad_hoc(self, host: str, module: str, args: dict[str, Any]) -> dict[str, Any]:
        argv = [self.ansible_bin, host, "-i", self.o.inventory, "-b", "-m", module]
        argv += ["-a", json.dumps(args)]
        self.say(self.shell(argv))
        if self.dry:
            return dict(DRY_LOCK)
        # ansible.cfg prints results as YAML; ad_hoc_result reads JSON
        env = {**self.env, "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
        run = {**self.kw, "env": env, "capture_output": True, "text": True}
        run["timeout"] = AD_HOC_TIMEOUT_S
        proc = subprocess.run(argv, **run, check=False)
        if proc.returncode != 0:
            raise TrialError(
                f"`ansible {host} -m {module}` exited {proc.returncode}: "
                f"{(proc.stdout + proc.stderr).strip()[-400:]}"
            )
        return ad_hoc_result(proc.stdout)

    def lock(self) -> dict[str, Any]:
        args = {"path": self.last["lock_path"], "state": "query"}
        return self.ad_hoc(self.last["lock_host"], "app_lock", args)

    @contextlib.contextmanager
    def load(self, step: str) -> Iterator[dict[str, Any]]:
        """tools.loadgen from LOAD_MARGIN_S before the block to as long after it; the dict
        yielded gets failed_requests, total_requests, by_status, errors and longest_wait_ms
        (the slowest request, answered or not) at the end."""
        stop, summary = self.out / f"{step}-stop", self.out / f"{step}-load.json"
        argv = load_argv(self.o, step, self.out)
        self.say(f"cd {self.project} && {shlex.join(argv)} &  # until {stop} exists")
        figures: dict[str, Any] = {"failed_requests": 0, "total_requests": 0, "by_status": {}}
        figures["requests"] = str(self.out / f"{step}-requests.jsonl")
        if self.dry:
            yield figures
            return
        stop.unlink(missing_ok=True)
        summary.unlink(missing_ok=True)
        with (self.out / f"{step}-load.log").open("w", encoding="utf-8") as log:
            proc = subprocess.Popen(argv, **self.kw, stdout=log, stderr=log)
        try:
            time.sleep(LOAD_MARGIN_S)
            if proc.poll() is not None:
                raise TrialError(f"the load generator exited at once; read {step}-load.log")
            yield figures
            time.sleep(LOAD_MARGIN_S)
        finally:
            stop.touch()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if not summary.exists():
            raise TrialError(f"the load generator wrote no summary; read {step}-load.log")
        s = json.loads(summary.read_text(encoding="utf-8"))
        figures.update(failed_requests=s["failed"], total_requests=s["total"])
        figures.update(by_status=s["by_status"], errors=s["errors"])
        figures.update(longest_wait_ms=s["longest_wait_ms"])

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One request to the app through the lb: --connect dialled, SNI and Host of --url."""
        parts = urlsplit(self.o.url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        sent = f" {json.dumps(body)}" if body else ""
        if self.dry or method != "GET":  # the job's polls would fill the screen
            self.say(f"{method} {parts.scheme}://{host}{path}{sent} (via {self.o.connect or host})")
        if self.dry:
            return 202, {"id": "JOB_ID", "status": "succeeded"}
        target = parse_addr(self.o.connect, port) if self.o.connect else (host, port)
        conn: http.client.HTTPConnection = _HTTPConnection(host, port, target, 10)
        if parts.scheme == "https":
            tls = ssl.create_default_context(cafile=self.o.cacert)
            conn = _HTTPSConnection(host, port, target, 10, tls)
        try:
            headers = {"Content-Type": "application/json"}
            conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        return response.status, json.loads(data) if data else None
