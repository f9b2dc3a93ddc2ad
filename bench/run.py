"""Run every benchmark, print its figures, and merge them into one JSON file.

    python3 bench/run.py --out bench/results/latest.json [--only NAME,...]

NAME: sandbox, app, converge, deploy, backup, monitoring.

With --only, the other benchmarks' figures already in the file are kept; every
benchmark's figures carry the time they were measured (`measured_at`).

Each sub-benchmark is a script in this folder that prints a human table on
stderr and, with --json, one JSON object on stdout. Ratios are printed beside
their baselines by the sub-benchmarks themselves, within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> the script and its arguments beyond --json. The sandbox bench builds a base
# image from scratch in an independent sandbox, so the README's base-build row is measured.
BENCHES = {
    "sandbox": (HERE / "sandbox_bench.py", ["--fresh-base"]),
    "app": (HERE / "app_bench.py", []),
    # site.yml on fresh VMs, one cluster at a time: cold, idempotent (slipway_linear over
    # Mitogen, and ANSIBLE_STRATEGY=linear as the baseline) and --check --diff on 1 host,
    # beside the bare apt work of the same packages on a second fresh VM; cold and idempotent
    # on 3 and 6 hosts (also bench/results/converge_scaling.png); wrk through nginx beside
    # Gunicorn on the 1-host VM.
    "converge": (HERE / "converge_bench.py", []),
    # Releases on a 6-VM cluster: deploy/restart/rollback seconds on 1-3 web hosts, and
    # tools/release_trial under load on 2 (also bench/results/deploy_timeline.png).
    "deploy": (HERE / "deploy_bench.py", []),
    # pg_dump|gzip against pgBackRest (role defaults) on a 1 GB database, a compression
    # matrix, and the recovery point of a crash (one VM).
    "backup": (HERE / "backup_bench.py", []),
    # The monitoring tier's converge cost and memory beside the rest of the site, what
    # Prometheus scrapes, and an outage of the app to the alert receiver against the bound
    # the role's intervals set (also bench/results/alert_timeline.png).
    "monitoring": (HERE / "monitoring_bench.py", []),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    args = parser.parse_args()

    results: dict[str, object] = {
        "machine": {
            "cpus": len(__import__("os").sched_getaffinity(0)),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    only = args.only.split(",")
    if set(only) != set(BENCHES) and args.out.exists():
        kept = json.loads(args.out.read_text())
        results.update({k: v for k, v in kept.items() if k in BENCHES and k not in only})
    failed = []
    for name in only:
        script, extra = BENCHES[name]
        print(f"== bench {name}: {script.name} {' '.join(extra)}", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, str(script), "--json", *extra],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(f"!! bench {name} failed (exit {proc.returncode})", file=sys.stderr)
            failed.append(name)
            continue
        results[name] = json.loads(proc.stdout)
        results[name]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
