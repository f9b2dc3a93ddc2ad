"""The six steps of the trial and the Trial that runs them in order: each step fills its
dict with figures and records its checks through verdict; trial.json gets the result."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from .checks import (
    FIGURES,
    WHY,
    flat,
    off_release,
    release_states,
    single,
    stale_lock,
    status_mismatches,
    stopped_at,
    web_current,
)
from .config import (
    DEPLOY,
    LOCK_WAIT_S,
    RESTART,
    ROLLBACK,
    SLEEP_TASK_S,
    STATUS,
    STEPS,
    TASK_WAIT_S,
    WORKER_PLAY,
    TrialError,
)
from .migrations import step_migrations
from .releases import MARKED_FILE, MIGRATION_FILE, READINESS_FILE, make_release, release_vars
from .runner import Run, Runner


class Trial(Runner):
    """The steps asked for, in order; `result` becomes trial.json, `failures` the sentences of
    the failed checks, `ids` the releases seen (original, good-1, bad, good-2)."""

    def __init__(self, o: argparse.Namespace) -> None:
        super().__init__(o)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.result: dict[str, Any] = {"started": started, "inventory": o.inventory, "url": o.url}
        self.result.update(limit=o.limit, steps=o.steps, out=str(self.out))
        self.failures: list[str] = []
        self.ids: dict[str, str | None] = {}

    def verdict(self, step: str, **checks: bool) -> None:
        """Record the checks; each failed one goes to the failures as WHY's sentence."""
        r = self.result[step]
        view = {k: "; ".join(v) if k == "problems" else v for k, v in r.items()}
        for name, ok in checks.items():
            r["checks"][name] = bool(ok)
            if not ok:
                why = WHY[name].format_map(defaultdict(lambda: "?", view))
                self.failures.append(f"{step}: {why}")

    def release(self, name: str, marker: str, bad: bool = False, migration: bool = False) -> Path:
        self.say(
            f"# copy `git ls-files -co --exclude-standard` of {self.project} to {self.out}/"
            f"src-{name}, append '# trial release {marker}' to {MARKED_FILE}"
            + (f" and a failing readiness to {READINESS_FILE}" if bad else "")
            + (f" and the expand-only migration {MIGRATION_FILE}" if migration else "")
        )
        if self.dry:
            return self.out / f"src-{name}"
        return make_release(self.project, self.out, name, marker, bad, migration)

    def step_migrations(self, r: dict[str, Any]) -> None:
        step_migrations(self, r)

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
