"""Release trial: a rolling deploy, a bad release, a rollback, two deploys at once, a task
through a restart and status.yml; under load where clients would notice, each checked against
what the hosts really run (tools/trial_probe.yml), not against the playbook's word.

    python3 -m tools.release_trial --inventory INV --url https://NAME/health/ready \\
        --connect LB_IP:443 --cacert PEBBLE_ROOT_CA --out DIR [--limit PATTERN] \\
        [--steps deploy,bad,rollback,concurrent,task,status] [--project REPO] [--dry-run]

Steps (each a dict of figures, `checks` and `passed` in trial.json): deploy (release good-1
under load), bad (a release whose readiness fails, under load: its first web host goes back
by itself), rollback (rollback.yml under load), concurrent (a second deploy.yml while good-2
deploys; then restart.yml over a stale lock), task (a sleep job running through restart.yml's
worker restart), status (status.yml after each step, against the probe). A release is a copy
of the repository's files (git ls-files -co --exclude-standard) in DIR/src-<name> with one
line appended, deployed with -e app_project_dir. The load: tools.loadgen, 8 connections at
50 requests/s, from 3 s before a playbook to 3 s after it; failed: non-2xx or no answer.

Runs ansible-playbook (from PATH: the venv's bin) in the repository root with
ANSIBLE_CONFIG=<repo>/ansible.cfg and SLIPWAY_AUDIT_LOG=DIR/audit.log; each run's output goes
to DIR/<run>.log, each step's requests to DIR/<step>-requests.jsonl. Writes DIR/trial.json and
prints it; exit 0 when every step passed its checks, else 1 with each failed check said in
one sentence on stderr. --dry-run prints every command it would run and runs none.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tools.loadgen import _HTTPConnection, _HTTPSConnection, parse_addr

REPO = Path(__file__).resolve().parents[1]
STEPS = ("deploy", "bad", "rollback", "concurrent", "task", "status")
DEPLOY, RESTART, ROLLBACK = (
    "playbooks/deploy.yml",
    "playbooks/restart.yml",
    "playbooks/rollback.yml",
)
STATUS, PROBE = "playbooks/status.yml", "tools/trial_probe.yml"
PLAYBOOK_TIMEOUT_S, PROBE_TIMEOUT_S, AD_HOC_TIMEOUT_S = 900.0, 300.0, 120.0
LOAD_MARGIN_S, LOCK_WAIT_S, TASK_WAIT_S, SLEEP_TASK_S = 3.0, 120.0, 180.0, 15
# restart.yml's worker play, as ansible-playbook announces it: the task step sends its job then.
WORKER_PLAY = "PLAY [Workers"
MARKED_FILE = "app/src/slipway_app/__init__.py"
READINESS_FILE = "app/src/slipway_app/core/readiness.py"
# Appended to readiness.py of the bad release: health.py imports `readiness` once the module
# has run, so this redefinition is the one it calls.
BAD_READINESS = """

# trial release built to fail readiness (tools/release_trial.py)
_trial_original_readiness = readiness


async def readiness(*args, **kwargs):  # type: ignore[no-untyped-def]  # noqa: F811
    checks = await _trial_original_readiness(*args, **kwargs)
    checks["trial"] = CheckResult("fail", error="trial release built to fail readiness")
    return checks
"""
# What --dry-run pretends the cluster answers, so every step prints all of its commands.
DRY_PROBE = {"hosts": {}, "web": ["FIRST_WEB"], "lock_host": "LOCK_HOST", "lock_path": "LOCK_PATH"}
DRY_LOCK = {"held": True, "stale": True, "lock": {"holder": "HOLDER", "token": "TOKEN"}}


# What each step records in trial.json (None until measured), besides checks and passed.
FIGURES = {
    "deploy": ("failed_requests", "total_requests", "seconds", "from", "to"),
    "bad": ("failed_requests", "total_requests", "all_hosts_on_previous", "message"),
    "rollback": ("seconds", "failed_requests", "total_requests"),
    "concurrent": ("second_refused", "names_holder", "stale_lock_expired"),
    "task": ("task_completed", "restart_seconds"),
}
# The sentence of each failed check, filled from its step's figures in trial.json.
WHY = {
    "rc_ok": "{playbook} exited {rc}; read {log}",
    "rc_failed": "{playbook} of a release that fails readiness exited 0; read {log}",
    "no_failed_requests": "{failed_requests} of {total_requests} requests failed ({by_status}, "
    "{errors}); each is a line of {requests}",
    "new_release": "the web tier did not move to a new release ({from} -> {to})",
    "hosts_on_new": "not every host runs the new release: {problems}",
    "stopped_at_first_web": "the output does not say the deploy stopped at {first_web} (it "
    "says {stopped_at}); read {log}",
    "all_hosts_on_previous": "not every web host is back on {previous}: {problems}",
    "bad_marked_failed": "release {bad} is not marked failed on every host that has it: "
    "{bad_states}",
    "hosts_on_original": "not every host is back on {target}: {problems}",
    "left_marked_rolled_back": "the release left, {left}, is not marked rolled-back on every "
    "host that has it: {left_states}",
    "lock_seen_held": "the fleet lock was never seen held while the first deploy.yml ran: {first}",
    "second_refused": "the second deploy.yml was not refused for the lock: {second}",
    "names_holder": "the second deploy's refusal does not say 'held by {holder}': {second}",
    "first_ok": "the first deploy.yml (good-2) failed: {first}",
    "hosts_on_good_2": "not every host runs good-2: {problems}",
    "stale_lock_expired": "restart.yml did not take over a stale lock: {restart}",
    "lock_free_after": "the lock is still held after restart.yml: {lock_after}",
    "job_accepted": "POST /api/jobs did not answer 202 with an id: {job_answer}",
    "task_completed": "job {job_id} is {job_status}, not succeeded, "
    f"{TASK_WAIT_S:.0f} s after it was sent",
    "ran": "the step stopped: {error}",
}


class TrialError(Exception):
    """Something the trial could not do, said as a sentence."""


# -- pure helpers -------------------------------------------------------------------------


def release_files(project: Path) -> list[str]:
    """The repository's files: tracked, and untracked ones git does not ignore."""
    argv = ["git", "-C", str(project), "ls-files", "-co", "--exclude-standard", "-z"]
    proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise TrialError(f"`{shlex.join(argv)}` failed: {proc.stderr.decode().strip()[-300:]}")
    return sorted({name for name in proc.stdout.decode().split("\0") if name})


def make_release(project: Path, out: Path, name: str, marker: str, bad: bool = False) -> Path:
    """Copy the repository's files to OUT/src-NAME, append `# trial release MARKER` to the
    app's __init__.py (a new wheel: a new release id); `bad` also makes readiness fail."""
    dest = out / f"src-{name}"
    if dest.exists():
        shutil.rmtree(dest)
    skip = out.resolve()
    for rel in release_files(project):
        src = project / rel
        if skip in src.resolve().parents or not (src.is_file() or src.is_symlink()):
            continue  # the trial's own output, a deleted file, a submodule
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)
    with (dest / MARKED_FILE).open("a", encoding="utf-8") as handle:
        handle.write(f"# trial release {marker}\n")
    if bad:
        with (dest / READINESS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(BAD_READINESS)
    return dest


def release_vars(copy: Path, project: Path) -> dict[str, str]:
    """Extra vars that deploy the copy, with the repository's wheel cache (no download)."""
    return {"app_project_dir": str(copy), "app_build_dir": str(project / ".cache" / "app-build")}


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
    }
    pairs = [(k, str(v)) for k, v in options.items() if v is not None]
    return [sys.executable, "-m", "tools.loadgen", *(x for pair in pairs for x in pair)]


def flat(text: str) -> str:
    """Output without colour codes and with every run of whitespace as one space (the YAML
    result format folds long lines, and colour is set line by line)."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def off_release(probe: dict[str, Any], release: str | None, web_only: bool = False) -> list[str]:
    """A sentence per host of the probe that is not on `release`: a web host must have it as
    `current`, serve it and be live and ready; a worker host must have it as `current`."""
    hosts = probe.get("hosts", {})
    if not any(h.get("web") for h in hosts.values()):
        return ["the probe saw no web host"]
    problems = []
    for name, h in sorted(hosts.items()):
        if h.get("web") and not (h["current"] == h["serving"] == release and h["healthy"]):
            ready = "live and ready" if h["healthy"] else "NOT live and ready"
            problems.append(
                f"{name} has current {h['current']}, serves {h['serving']}, {ready} "
                f"(expected {release})"
            )
        elif not h.get("web") and not web_only and h["current"] != release:
            problems.append(f"{name} has current {h['current']} (expected {release})")
    return problems


def release_states(probe: dict[str, Any], release: str | None) -> dict[str, str]:
    """{host: state of `release`} for the hosts of the probe that have it."""
    hosts = sorted(probe.get("hosts", {}).items())
    return {n: r["state"] for n, h in hosts for r in h.get("releases", []) if r["id"] == release}


def stopped_at(output: str) -> tuple[str | None, str | None, str]:
    """(release, host, message) of the play's "The deploy to X stopped at HOST: ..." message."""
    text = flat(output)
    match = re.search(r"The \w+ to (\S+) stopped at ([^\s:]+):", text)
    if not match:
        return None, None, ""
    end = text.find("deploy again.", match.start())
    stop = end + len("deploy again.") if end > 0 else match.start() + 600
    return match.group(1), match.group(2), text[match.start() : stop]


def status_mismatches(output: str, probe: dict[str, Any]) -> list[str]:
    """Hosts whose status.yml line ("HOST: current X, serving Y, ...; rollback target Z")
    does not show what the probe saw: current, and the release a web host serves."""
    text, problems = flat(output), []
    for name, h in sorted(probe.get("hosts", {}).items()):
        at = text.find(f"{name}: current ")
        line = text[at : text.find("rollback target", at)] if at >= 0 else ""
        if f"current {h['current']}," not in line:
            problems.append(f"{name}'s line does not say current {h['current']}")
        elif h.get("web") and h.get("serving") and f"serving {h['serving']}," not in line:
            problems.append(f"{name}'s line does not say serving {h['serving']}")
    return problems


def single(span: Any) -> str | None:
    """An audit line's `from`/`to` when it names one release (not '?' nor a list)."""
    return span if isinstance(span, str) and span not in ("", "?") and "," not in span else None


def web_current(probe: dict[str, Any]) -> str | None:
    """`current` of the first web host of the probe."""
    web = probe.get("web") or [None]
    return probe.get("hosts", {}).get(web[0], {}).get("current")


def stale_lock(token: str, now: float) -> dict[str, Any]:
    """A lock file as app_lock writes it, last refreshed an hour ago, with a 60 s ttl."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 3600))
    return {
        "holder": "release-trial (a run that died)",
        "operation": "trial stale lock",
        "token": token,
        "acquired_at": now - 3600,
        "acquired_at_iso": iso,
        "refreshed_at": now - 3600,
        "refreshed_at_iso": iso,
        "ttl": 60,
    }


def ad_hoc_result(stdout: str) -> dict[str, Any]:
    """The module result of `ansible HOST -m MODULE` output, `HOST | SUCCESS => ` then the
    result as YAML (ansible.cfg's callback_result_format) or JSON (YAML reads both)."""
    at = stdout.find("=>")
    result = yaml.safe_load(stdout[at + 2 :]) if at >= 0 else None
    if not isinstance(result, dict):
        raise TrialError(f"no module result in the ad-hoc output: {stdout.strip()[-300:]}")
    return result


# -- the trial ----------------------------------------------------------------------------


@dataclass
class Run:
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


class Trial:
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
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.result: dict[str, Any] = {"started": started, "inventory": o.inventory, "url": o.url}
        self.result.update(limit=o.limit, steps=o.steps, out=str(self.out))
        self.failures: list[str] = []
        self.last: dict[str, Any] = {}  # the newest probe
        self.spawned: list[Run] = []
        self.ids: dict[str, str | None] = {}

    def say(self, line: str) -> None:
        """A command or a note: on stdout for --dry-run, else on stderr as progress."""
        if self.dry:
            print(line, flush=True)
        else:
            print(f"release_trial: {line}", file=sys.stderr, flush=True)

    def pause(self, seconds: float) -> None:
        if not self.dry:
            time.sleep(seconds)

    def verdict(self, step: str, **checks: bool) -> None:
        """Record the checks; each failed one goes to the failures as WHY's sentence."""
        r = self.result[step]
        view = {k: "; ".join(v) if k == "problems" else v for k, v in r.items()}
        for name, ok in checks.items():
            r["checks"][name] = bool(ok)
            if not ok:
                why = WHY[name].format_map(defaultdict(lambda: "?", view))
                self.failures.append(f"{step}: {why}")

    def release(self, name: str, marker: str, bad: bool = False) -> Path:
        self.say(
            f"# copy `git ls-files -co --exclude-standard` of {self.project} to {self.out}/"
            f"src-{name}, append '# trial release {marker}' to {MARKED_FILE}"
            + (f" and a failing readiness to {READINESS_FILE}" if bad else "")
        )
        if self.dry:
            return self.out / f"src-{name}"
        return make_release(self.project, self.out, name, marker, bad)

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
        yielded gets failed_requests, total_requests, by_status and errors at the end."""
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

    # -- steps: each fills its dict with figures (and its checks, through verdict)
    def loaded(self, step: str, r: dict[str, Any], playbook: str, extra: Any = None) -> Run:
        """The playbook under load; its figures and the load's go into r as soon as known."""
        with self.load(step) as load:
            run = self.run(step, playbook, extra)
        r.update({**load, **run.figures()})
        self.verdict(step, no_failed_requests=load["failed_requests"] == 0)
        return run

    def step_deploy(self, r: dict[str, Any]) -> None:
        r["from"] = self.ids["original"] = web_current(self.last or self.probe("start"))
        run = self.loaded(
            "deploy", r, DEPLOY, release_vars(self.release("good-1", "1"), self.project)
        )
        self.verdict("deploy", rc_ok=run.rc == 0)
        if not self.dry:
            from bench.timeline import plot_timeline

            audit = run.audit or {}
            title = (
                f"deploy {r['from']} -> {audit.get('to')}: {r['failed_requests']} failed requests"
            )
            png, events = self.out / "deploy_timeline.png", audit.get("events", [])
            try:
                plot_timeline(self.out / "deploy-requests.jsonl", events, png, title)
                r["timeline"] = str(png)
            except Exception as exc:  # a picture that cannot be drawn fails no check
                r["timeline_error"] = f"{png} was not drawn: {type(exc).__name__}: {exc}"
        after = self.probe("deploy")
        new = self.ids["good-1"] = single((run.audit or {}).get("to")) or web_current(after)
        r.update(to=new, problems=off_release(after, new))
        self.verdict(
            "deploy", new_release=new not in (None, r["from"]), hosts_on_new=not r["problems"]
        )

    def step_bad(self, r: dict[str, Any]) -> None:
        r["previous"] = self.ids.get("good-1") or web_current(self.last or self.probe("start"))
        copy = self.release("bad", "bad", bad=True)
        run = self.loaded("bad", r, DEPLOY, release_vars(copy, self.project))
        r["bad"], r["stopped_at"], r["message"] = stopped_at(run.output)
        self.ids["bad"] = r["bad"]
        after = self.probe("bad")
        r["problems"] = off_release(after, r["previous"], web_only=True)
        r["bad_states"], r["first_web"] = (
            release_states(after, r["bad"]),
            (after.get("web") or [None])[0],
        )
        r["all_hosts_on_previous"] = not r["problems"]
        self.verdict(
            "bad",
            rc_failed=run.rc != 0,
            stopped_at_first_web=r["stopped_at"] is not None and r["stopped_at"] == r["first_web"],
            all_hosts_on_previous=r["all_hosts_on_previous"],
            bad_marked_failed=set(r["bad_states"].values()) == {"failed"},
        )

    def step_rollback(self, r: dict[str, Any]) -> None:
        before = self.last or self.probe("start")
        r["left"], first = web_current(before), (before.get("web") or [None])[0]
        r["target"] = self.ids.get("original") or before["hosts"].get(first, {}).get(
            "rollback_target"
        )
        run = self.loaded("rollback", r, ROLLBACK)
        after = self.probe("rollback")
        r["problems"], r["left_states"] = (
            off_release(after, r["target"]),
            release_states(after, r["left"]),
        )
        self.verdict(
            "rollback",
            rc_ok=run.rc == 0,
            hosts_on_original=not r["problems"],
            left_marked_rolled_back=set(r["left_states"].values()) == {"rolled-back"},
        )

    def step_concurrent(self, r: dict[str, Any]) -> None:
        _ = self.last or self.probe("start")
        extra = release_vars(self.release("good-2", "2"), self.project)
        first = self.spawn("concurrent-first", DEPLOY, extra)
        self.say(
            f"# in the background; the lock is asked for every 1 s, {LOCK_WAIT_S:.0f} s at most:"
        )
        holder, deadline = None, time.monotonic() + LOCK_WAIT_S
        while holder is None and time.monotonic() < deadline and first.alive():
            lock = self.lock()
            holder = lock["lock"]["holder"] if lock.get("held") else None
            self.pause(0 if holder else 1)
        second = self.run("concurrent-second", DEPLOY, extra) if holder else None
        self.say("# the second must be refused; then wait for the first (it must pass)")
        said = flat(second.output) if second else ""
        r.update(
            holder=holder, first=self.wait(first).figures(), second=second and second.figures()
        )
        r["second_refused"] = bool(second and second.rc != 0 and "held by" in said)
        r["names_holder"] = bool(holder and f"held by {holder}" in said)
        token = f"trial-stale-{uuid.uuid4()}"
        content = json.dumps(stale_lock(token, time.time()), indent=2) + "\n"
        args = {"content": content, "dest": self.last["lock_path"], "mode": "0644"}
        self.ad_hoc(self.last["lock_host"], "ansible.builtin.copy", args)
        planted = self.lock()
        restart = self.run("concurrent-stale", RESTART)
        r.update(restart=restart.figures(), lock_after=self.lock())
        planted_ok = planted.get("stale") and planted["lock"]["token"] in (token, "TOKEN")
        r["stale_lock_expired"] = bool(planted_ok and restart.rc == 0)
        after = self.probe("concurrent")
        good2 = single((first.audit or {}).get("to")) or web_current(after)
        r["problems"], self.ids["good-2"] = off_release(after, good2), good2
        self.verdict(
            "concurrent",
            lock_seen_held=holder is not None,
            second_refused=r["second_refused"],
            names_holder=r["names_holder"],
            first_ok=first.rc == 0,
            hosts_on_good_2=not r["problems"],
            stale_lock_expired=r["stale_lock_expired"],
            lock_free_after=not r["lock_after"].get("held"),
        )

    def step_task(self, r: dict[str, Any]) -> None:
        """A sleep job sent when restart.yml reaches its worker play, so that it runs while
        the worker restarts (sent before the run, it would end before the web tier had)."""
        _ = self.last or self.probe("start")
        run, until = self.spawn("task-restart", RESTART), time.monotonic() + self.o.playbook_timeout
        self.say(f"# when the log shows '{WORKER_PLAY}' (or restart.yml ended):")
        while not self.dry and run.alive() and time.monotonic() < until:
            if WORKER_PLAY in run.log.read_text(encoding="utf-8", errors="replace"):
                break
            time.sleep(0.5)
        r["job_sent"] = "at the worker play" if run.alive() else "after restart.yml ended"
        status, job, terminal = 0, None, ("succeeded", "failed")
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            status, job = self.api("POST", "/api/jobs", {"kind": "sleep", "seconds": SLEEP_TASK_S})
        job_id = job.get("id") if status == 202 and isinstance(job, dict) else None
        r.update(job_answer=f"{status}: {job}", job_id=job_id, job_status=None)
        deadline = time.monotonic() + TASK_WAIT_S
        r.update(self.wait(run).figures(), restart_seconds=round(run.seconds, 1))
        while job_id and time.monotonic() < deadline and r["job_status"] not in terminal:
            self.pause(0 if self.dry else 2)
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                r["job_status"] = (self.api("GET", f"/api/jobs/{job_id}")[1] or {}).get("status")
        r["task_completed"] = r["job_status"] == "succeeded"
        self.verdict(
            "task",
            rc_ok=run.rc == 0,
            job_accepted=job_id is not None,
            task_completed=r["task_completed"],
        )
        self.probe("task")

    def status_after(self, step: str) -> None:
        run = self.run(f"status-after-{step}", STATUS)
        problems = ([f"status.yml exited {run.rc}"] if run.rc else []) + status_mismatches(
            run.output, self.last
        )
        s = self.result["status"]
        s["after"][step] = {"matched": not problems, "problems": problems, "log": str(run.log)}
        s["status_true_after"] += [] if problems else [step]
        s["checks"][f"after_{step}"] = not problems
        if problems:
            self.failures.append(f"status: after {step}: {'; '.join(problems)}; read {run.log}")

    def main(self) -> int:
        if "status" in self.o.steps:
            self.result["status"] = {"checks": {}, "after": {}, "status_true_after": []}
        for step in (s for s in STEPS if s in self.o.steps and s != "status"):
            self.say(f"## {step}")
            r = self.result[step] = {**dict.fromkeys(FIGURES[step]), "checks": {}}
            self.last.pop("label", None)
            try:
                getattr(self, f"step_{step}")(r)
            except (TrialError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
                r["error"] = f"{type(exc).__name__}: {exc}"
                self.verdict(step, ran=False)
            for run in self.spawned:  # a step that stopped early leaves no playbook behind
                self.wait(run)
            self.spawned.clear()
            r["passed"] = bool(r["checks"]) and all(r["checks"].values())
            if "status" in self.result and self.last.get("label") == step:
                self.status_after(step)
            if not r["passed"] and not self.dry:
                logs = [p for p in self.out.glob(f"{step}*.log") if "-load" not in p.name]
                logs.sort(key=lambda p: p.stat().st_mtime)
                tail = logs[-1].read_text(errors="replace").splitlines()[-30:] if logs else []
                self.say(
                    f"{step} failed; the last lines of {logs[-1] if logs else 'its log'}:\n"
                    + "\n".join(tail)
                )
            self.write()
        if "status" in self.result:
            s = self.result["status"] = self.result.pop("status")  # after the steps it checked
            s["passed"] = bool(s["checks"]) and all(s["checks"].values())
        self.result.update(passed=not self.failures, failed_checks=self.failures, ids=self.ids)
        if self.dry:
            return 0
        self.write()
        print(json.dumps(self.result, indent=2))
        for sentence in self.failures:
            print(f"release_trial: FAILED {sentence}", file=sys.stderr)
        return 0 if not self.failures else 1

    def write(self) -> None:
        if not self.dry:
            self.result.pop("ended", None)  # last in the file
            self.result["ended"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            (self.out / "trial.json").write_text(json.dumps(self.result, indent=2) + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="release_trial",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--inventory", required=True, help="inventory file or directory (-i)")
    p.add_argument("--url", required=True, help="health URL through the lb, for the load")
    p.add_argument("--connect", help="ADDR:PORT of the lb to dial (SNI and Host from --url)")
    p.add_argument("--cacert", help="CA of the lb's certificate (tools/pebble.py root-ca)")
    p.add_argument("--out", required=True, help="directory for trial.json, logs and copies")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset, in order")
    p.add_argument("--limit", help="ansible-playbook --limit of every run")
    p.add_argument("--project", default=str(REPO), help="repository root (default: this one)")
    p.add_argument("--concurrency", type=int, default=8, help="load connections (default 8)")
    p.add_argument("--rate", type=float, default=50.0, help="load requests/s (default 50)")
    p.add_argument("--playbook-timeout", type=float, default=PLAYBOOK_TIMEOUT_S, help="seconds")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    o = p.parse_args(argv)
    o.steps = [s.strip() for s in o.steps.split(",") if s.strip()]
    if set(o.steps) - set(STEPS):
        p.error(f"--steps: unknown {sorted(set(o.steps) - set(STEPS))}; choose from {STEPS}")
    return o


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    try:
        for path, what in (
            (o.inventory, "--inventory"),
            (o.cacert, "--cacert"),
            (Path(o.project) / "ansible.cfg", "--project's ansible.cfg"),
        ):
            if path and not Path(path).exists() and not o.dry_run:
                raise TrialError(f"{what} {path} does not exist")
        if not o.dry_run:
            Path(o.out).mkdir(parents=True, exist_ok=True)
        return Trial(o).main()
    except TrialError as exc:
        print(f"release_trial: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
