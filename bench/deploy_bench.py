"""Releases on a cluster of sandbox VMs: deploy, restart and rollback seconds on 1, 2 and 3
web hosts, then tools/release_trial on 2 web hosts under load (failed requests of a rolling
deploy, of a bad release and of a rollback; a second deploy refused by the fleet lock).

    python3 bench/deploy_bench.py [--json] [--keep] [--dry-run]

A cluster of its own (`bench-deploy`): lb, web1, web2, web3, worker and data (db, redis), on
its own name on Pebble, converged once with site.yml. Each web host count n is a --limit of
the worker and the first n web hosts: the other web hosts keep serving their release behind
the lb and are not touched. A per-n inventory would change the lb's upstream and the
peer-only firewall (both follow the web group), so each n would need a converge of the lb and
every peer first (minutes on this machine) before the deploy it measures; --limit changes
only which hosts the release moves on, with one converge for the whole bench.

Logs: every command's output goes to .cache/deploy-bench/logs/<name>.log, the trial's files
to .cache/deploy-bench/trial/ (kept after the run). The VMs are removed at the end (also on
failure) unless --keep. Needs root and the controller venv. --dry-run prints the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import tools.*

from tools.release_trial.releases import make_release, release_vars  # noqa: E402
from tools.release_trial.runner import trial_env  # noqa: E402

BIN = REPO / ".venv" / "bin"
CLUSTER, DOMAIN, PREFIX = "bench-deploy", "deploy-bench.sandbox.test", "bdep"
VMS = {"lb": "lb", "web1": "web", "web2": "web", "web3": "web", "worker": "worker",
       "data": "db,redis"}  # fmt: skip
WORK = REPO / ".cache" / "deploy-bench"
CONVERGE_TIMEOUT_S, PLAYBOOK_TIMEOUT_S, TRIAL_TIMEOUT_S, UP_TIMEOUT_S = 3600, 1200, 3600, 1800
GOAL = (
    "health-gated rollback of 2 web hosts <= 10 s; reference: symlink-only rollback role "
    "8.5 s on 3 VMs"
)
TRIAL_STEPS = "deploy,bad,rollback,concurrent"


def log(message: str) -> None:
    print(f"deploy-bench: {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.env = trial_env(REPO, WORK, {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
        self.inventory = WORK / "inventory"

    def sh(self, name: str, argv: list[str], timeout: float) -> tuple[float, str]:
        """Run argv in the repository root, output to WORK/logs/NAME.log; seconds and stdout.
        A non-zero exit stops the bench with the command and the log's last lines."""
        path = WORK / "logs" / f"{name}.log"
        log(f"{name}: {shlex.join(argv)} > {path}")
        if self.dry:
            return 0.0, ""
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True,
                                  timeout=timeout, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            said = [
                x.decode() if isinstance(x, bytes) else x or "" for x in (exc.stdout, exc.stderr)
            ]
            path.write_text(f"$ {shlex.join(argv)}\n{''.join(said)}")
            raise SystemExit(f"deploy-bench: {name} ran past {timeout:.0f} s; read {path}") from exc
        seconds = time.monotonic() - started
        path.write_text(f"$ {shlex.join(argv)}\n{proc.stdout}\n{proc.stderr}")
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise SystemExit(f"deploy-bench: {name} exited {proc.returncode}; read {path}:\n{tail}")
        return seconds, proc.stdout

    def playbook(self, name: str, playbook: str, limit: str, extra: dict[str, str] | None) -> float:
        argv = [str(BIN / "ansible-playbook"), "-i", str(self.inventory), playbook]
        argv += ["--limit", limit] if limit else []
        argv += ["-e", json.dumps(extra)] if extra else []
        return self.sh(name, argv, PLAYBOOK_TIMEOUT_S)[0]

    def up(self) -> str:
        """Boot the VMs, write the inventory; the lb's address."""
        specs = [f"--vm={PREFIX}-{name}:{groups}" for name, groups in VMS.items()]
        argv = [sys.executable, "-m", "tools.sandbox", "up", "--cluster", CLUSTER, "--json"]
        argv += ["--inventory", str(self.inventory / "hosts.yml"), *specs]
        log(
            f"inventory: {self.inventory} (group_vars: a copy of inventories/sandbox/group_vars; "
            f"host_vars/{PREFIX}-lb.yml: slipway_domains [{DOMAIN}], nginx_rate_limit false)"
        )
        if self.dry:
            self.sh("sandbox-up", argv, UP_TIMEOUT_S)
            return "LB_IP"
        (self.inventory / "host_vars").mkdir(parents=True, exist_ok=True)
        shutil.copytree(REPO / "inventories/sandbox/group_vars", self.inventory / "group_vars",
                        dirs_exist_ok=True)  # fmt: skip
        (self.inventory / "host_vars" / f"{PREFIX}-lb.yml").write_text(
            f"---\nslipway_domains: [{DOMAIN}]\n"
            "# The load generator is one client address: the per-IP limit would answer 429.\n"
            "nginx_rate_limit: false\n"
        )
        _, out = self.sh("sandbox-up", argv, UP_TIMEOUT_S)
        vms = {vm["name"]: vm["address"] for vm in json.loads(out).get("vms", [])}
        if f"{PREFIX}-lb" not in vms:
            raise SystemExit(f"deploy-bench: `sandbox up` did not report {PREFIX}-lb: {out[-500:]}")
        return str(vms[f"{PREFIX}-lb"])

    def down(self) -> None:
        argv = [sys.executable, "-m", "tools.sandbox", "down", "--cluster", CLUSTER]
        log(f"teardown: {shlex.join(argv)}")
        if not self.dry:
            subprocess.run(argv, cwd=REPO, capture_output=True, check=False, timeout=600)

    def by_web_hosts(self) -> dict[str, dict[str, float]]:
        """deploy (a new release), restart and rollback (back to the converged release) of
        the worker and the first n web hosts, one web host at a time (the default); then the
        same release again and a rollback of all n web hosts in one batch
        (-e app_deploy_batch_size=n: no drain, the socket queue carries the restarts)."""
        figures = {}
        for n in (1, 2, 3):
            limit = ",".join([f"{PREFIX}-worker"] + [f"{PREFIX}-web{i}" for i in range(1, n + 1)])
            copy = WORK / f"src-bench-{n}"
            if not self.dry:
                copy = make_release(REPO, WORK, f"bench-{n}", f"bench {n}")
            deploy = self.playbook(f"deploy-{n}-web", "playbooks/deploy.yml", limit,
                                   release_vars(copy, REPO))  # fmt: skip
            restart = self.playbook(f"restart-{n}-web", "playbooks/restart.yml", limit, None)
            rollback = self.playbook(f"rollback-{n}-web", "playbooks/rollback.yml", limit, None)
            self.playbook(f"redeploy-{n}-web", "playbooks/deploy.yml", limit,
                          release_vars(copy, REPO))  # fmt: skip
            at_once = self.playbook(f"rollback-{n}-web-one-batch", "playbooks/rollback.yml",
                                    limit, {"app_deploy_batch_size": str(n)})  # fmt: skip
            figures[str(n)] = {"deploy_s": round(deploy, 1), "restart_s": round(restart, 1),
                               "rollback_s": round(rollback, 1),
                               "rollback_one_batch_s": round(at_once, 1)}  # fmt: skip
            log(f"{n} web host(s): {figures[str(n)]}")
        return figures

    def trial(self, lb: str, root_ca: str) -> dict[str, object]:
        """tools/release_trial on the worker and 2 web hosts; its trial.json."""
        out = WORK / "trial"
        argv = [sys.executable, "-m", "tools.release_trial", "--inventory", str(self.inventory),
                "--url", f"https://{DOMAIN}/health/ready", "--connect", f"{lb}:443", "--cacert",
                root_ca, "--out", str(out), "--steps", TRIAL_STEPS, "--limit",
                f"{PREFIX}-worker,{PREFIX}-web1,{PREFIX}-web2"]  # fmt: skip
        path = WORK / "logs" / "trial.log"
        log(f"trial: {shlex.join(argv)} > {path} (its runs: {out}/*.log)")
        if self.dry:
            return {}
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            proc = subprocess.run(argv, cwd=REPO, env=self.env, stdout=handle, stderr=handle,
                                  timeout=TRIAL_TIMEOUT_S, check=False)  # fmt: skip
        if not (out / "trial.json").exists():
            raise SystemExit(f"deploy-bench: the trial exited {proc.returncode} without "
                             f"{out}/trial.json; read {path}")  # fmt: skip
        result: dict[str, object] = json.loads((out / "trial.json").read_text())
        return result


def figures_of(trial: dict[str, Any]) -> dict[str, Any]:
    """The keys under deploy. that come from the trial."""
    d, b, r, c = (trial.get(k, {}) for k in ("deploy", "bad", "rollback", "concurrent"))
    return {
        "rolling_deploy": {k: d.get(k) for k in ("failed_requests", "total_requests", "seconds")},
        "bad_release": {k: b.get(k) for k in ("failed_requests", "all_hosts_on_previous")},
        "rollback": {k: r.get(k) for k in ("seconds", "failed_requests")},
        "concurrent_deploy": {"second_refused": c.get("second_refused")},
        "trial_passed": trial.get("passed"),
        "trial_failed_checks": trial.get("failed_checks", []),
    }


def table(result: dict[str, Any]) -> None:
    def out(line: str) -> None:
        print(line, file=sys.stderr)

    out(f"{'web hosts':<12} {'deploy s':>9} {'restart s':>10} {'rollback s':>11} "
        f"{'rollback, one batch s':>22}")  # fmt: skip
    for n, row in result["by_web_hosts"].items():
        out(f"{n:<12} {row['deploy_s']:9.1f} {row['restart_s']:10.1f} {row['rollback_s']:11.1f} "
            f"{row['rollback_one_batch_s']:22.1f}")  # fmt: skip
    d, b, r = result["rolling_deploy"], result["bad_release"], result["rollback"]
    out(f"{'under load, 2 web hosts':<34} {'seconds':>8} {'failed':>7} {'requests':>9}")
    out(f"{'rolling deploy':<34} {d['seconds']!s:>8} {d['failed_requests']!s:>7} "
        f"{d['total_requests']!s:>9}")  # fmt: skip
    out(f"{'bad release (all back: ' + str(b['all_hosts_on_previous']) + ')':<34} {'-':>8} "
        f"{b['failed_requests']!s:>7}")  # fmt: skip
    out(f"{'rollback':<34} {r['seconds']!s:>8} {r['failed_requests']!s:>7}")
    out(f"second deploy refused by the lock: {result['concurrent_deploy']['second_refused']}")
    two = result["by_web_hosts"].get("2", {}).get("rollback_s")
    out(f"rollback of 2 web hosts: {two} s (no load), {r['seconds']} s (under load); goal: {GOAL}")
    if not result["trial_passed"]:
        out(f"!! the release trial failed checks: {'; '.join(result['trial_failed_checks'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    parser.add_argument("--keep", action="store_true", help="leave the VMs up")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    if os.geteuid() != 0 and not args.dry_run:
        raise SystemExit("deploy-bench: boots sandbox VMs (systemd-nspawn): run it as root")
    bench = Bench(args.dry_run)
    bench.down()  # a cluster left by an earlier run
    if not args.dry_run:
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
    try:
        lb = bench.up()
        bench.sh("pebble", [sys.executable, "tools/pebble.py", "start", f"--domain={DOMAIN}={lb}"],
                 300)  # fmt: skip
        converge, _ = bench.sh("converge", [str(BIN / "ansible-playbook"), "-i",
                               str(bench.inventory), "site.yml"], CONVERGE_TIMEOUT_S)  # fmt: skip
        log(f"converged in {converge:.0f} s; the figures follow")
        root_ca = bench.sh("root-ca", [sys.executable, "tools/pebble.py", "root-ca"], 60)[1].strip()
        if not root_ca and not args.dry_run:
            raise SystemExit("deploy-bench: `tools/pebble.py root-ca` printed no path")
        result: dict[str, Any] = {"web_hosts_by": "--limit (one converge; see the docstring)"}
        result["by_web_hosts"] = bench.by_web_hosts()
        trial = bench.trial(lb, root_ca or "PEBBLE_ROOT_CA")
        result.update(figures_of(trial), goal=GOAL, trial_dir=str(WORK / "trial"))
        png = WORK / "trial" / "deploy_timeline.png"
        if png.exists():
            shutil.copy(png, REPO / "bench" / "results" / "deploy_timeline.png")
            result["timeline_png"] = "bench/results/deploy_timeline.png"
        if args.dry_run:
            return 0
        table(result)
        if args.json:
            print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            bench.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
