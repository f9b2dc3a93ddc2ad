"""Sandbox timings: `up` of 1 and of 3 VMs (boot to `running` + SSH up), and `down`.

    python3 bench/sandbox_bench.py [--json] [--rounds N] [--fresh-base]

Uses a cluster of its own beside whatever else runs. The base image is built
first if missing, and that build is reported on its own line, not in the `up`
figures. `--fresh-base` also times a base build from scratch (mmdebstrap, ~40 s)
in a second, independent sandbox (own state dir, bridge and subnet) that is
purged afterwards. Human table on stderr; with --json, one JSON object on
stdout (bench/run.py merges it into bench/results/latest.json). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SANDBOX = [sys.executable, "-m", "tools.sandbox"]  # run with cwd=REPO
CLUSTER = "bench-sandbox"
FRESH = {"SLIPWAY_SANDBOX_BRIDGE": "slipbr8", "SLIPWAY_SANDBOX_NETWORK": "10.231.8.0/24"}


def timed(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(
        [*SANDBOX, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise SystemExit(f"sandbox {' '.join(args)} failed: {proc.stderr[-1000:]}")
    return time.monotonic() - started, proc.stdout


def up(count: int, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Seconds for `up` of `count` new VMs, and the base build seconds it included."""
    vms = [f"--vm=bench-{i}:web" for i in range(1, count + 1)]
    seconds, out = timed("up", "--cluster", CLUSTER, "--inventory", "-", "--json", *vms, env=env)
    return seconds, float(json.loads(out).get("base_build_s", 0.0))


def down(env: dict[str, str] | None = None) -> float:
    return timed("down", "--cluster", CLUSTER, env=env)[0]


def fresh_base() -> dict[str, float]:
    """A base build from nothing, in an independent sandbox that is purged after."""
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        env = {**FRESH, "SLIPWAY_SANDBOX_DIR": tmp}
        try:
            first_s, base_s = up(1, env)
        finally:
            timed("down", "--all", "--purge", env=env)
    return {"fresh_base_build_s": round(base_s, 1), "fresh_first_up_s": round(first_s, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="JSON object on stdout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh-base", action="store_true", help="also time mmdebstrap")
    args = parser.parse_args()
    down()  # a cluster left over by an interrupted run

    first_s, base_s = up(1)  # builds the base image when missing; not counted below
    down()
    figures: dict[str, list[float]] = {
        "up_1_vm_s": [],
        "down_1_vm_s": [],
        "up_3_vms_s": [],
        "down_3_vms_s": [],
    }
    for _ in range(args.rounds):
        figures["up_1_vm_s"].append(up(1)[0])
        figures["down_1_vm_s"].append(down())
        figures["up_3_vms_s"].append(up(3)[0])
        figures["down_3_vms_s"].append(down())
    result: dict[str, object] = {
        name: {
            "median": round(statistics.median(v), 2),
            "min": round(min(v), 2),
            "max": round(max(v), 2),
            "rounds": len(v),
        }
        for name, v in figures.items()
    }
    result["first_up_s"] = round(first_s, 1)
    result["base_build_s"] = round(base_s, 1)  # 0: the cached base was used
    up1 = statistics.median(figures["up_1_vm_s"])
    up3 = statistics.median(figures["up_3_vms_s"])
    result["up_3_over_1_ratio"] = round(up3 / up1, 2)
    if args.fresh_base:
        result.update(fresh_base())

    if base_s:
        print(f"base image built in {base_s:.0f} s (first up: {first_s:.0f} s)", file=sys.stderr)
    print(f"{'sandbox':<24} {'median s':>9} {'min':>7} {'max':>7}", file=sys.stderr)
    for name, v in figures.items():
        row = f"{name:<24} {statistics.median(v):9.2f} {min(v):7.2f} {max(v):7.2f}"
        print(row, file=sys.stderr)
    print(f"3 VMs / 1 VM up time: {up3 / up1:.2f}x (1 VM = baseline)", file=sys.stderr)
    if args.fresh_base:
        print(f"fresh base build (mmdebstrap): {result['fresh_base_build_s']} s", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
