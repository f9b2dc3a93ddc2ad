"""Sandbox timings: `up` of 1 and of 3 VMs (boot to `running` + SSH), and `down`.

    python3 bench/sandbox_bench.py [--json] [--rounds N]

Uses a cluster of its own; the base image is built first if missing, and that
build is reported on its own line. Needs root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SANDBOX = [sys.executable, str(REPO / "tools" / "sandbox.py")]
CLUSTER = "bench-sandbox"


def timed(*args: str) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run([*SANDBOX, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"sandbox {' '.join(args)} failed: {proc.stderr[-1000:]}")
    return time.monotonic() - started, proc.stdout


def up(count: int) -> tuple[float, float]:
    vms = [f"--vm=bench-{i}:web" for i in range(1, count + 1)]
    seconds, out = timed("up", "--cluster", CLUSTER, "--inventory", "-", "--json", *vms)
    return seconds, float(json.loads(out).get("base_build_s", 0.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    subprocess.run([*SANDBOX, "down", "--cluster", CLUSTER], capture_output=True, check=False)

    first_s, base_s = up(1)  # builds the base image when missing; not counted below
    timed("down", "--cluster", CLUSTER)
    figures: dict[str, list[float]] = {"up_1_vm_s": [], "up_3_vms_s": [], "down_3_vms_s": []}
    for _ in range(args.rounds):
        figures["up_1_vm_s"].append(up(1)[0])
        timed("down", "--cluster", CLUSTER)
        figures["up_3_vms_s"].append(up(3)[0])
        figures["down_3_vms_s"].append(timed("down", "--cluster", CLUSTER)[0])
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
    result["base_build_s"] = round(base_s, 1)  # 0 when the cached base was used
    if base_s:
        print(f"base image built in {base_s:.0f} s (first up: {first_s:.0f} s)", file=sys.stderr)
    print(f"{'sandbox':<24} {'median s':>9} {'min':>7} {'max':>7}", file=sys.stderr)
    for name, v in figures.items():
        print(
            f"{name:<24} {statistics.median(v):9.2f} {min(v):7.2f} {max(v):7.2f}", file=sys.stderr
        )
    up1 = statistics.median(figures["up_1_vm_s"])
    up3 = statistics.median(figures["up_3_vms_s"])
    print(f"3 VMs / 1 VM up time: {up3 / up1:.2f}x (1 VM = baseline)", file=sys.stderr)
    result["up_3_over_1_ratio"] = round(up3 / up1, 2)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
