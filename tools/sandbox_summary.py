"""Print how to reach the service `make sandbox` just converged, and check it.

Reads the sandbox VMs (python3 -m tools.sandbox status) and the sandbox inventory's
slipway_domains, asks https://<name>/health/ready through nginx with the
certificate verified against Pebble's root, and prints a curl line to repeat it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    status = subprocess.run(
        [sys.executable, "-m", "tools.sandbox", "status", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    vms = json.loads(status.stdout)["vms"]
    lb = next((vm for vm in vms if "lb" in vm["groups"]), None)
    if lb is None:
        print("sandbox: no lb VM is up; run `make sandbox`", file=sys.stderr)
        return 1
    site = yaml.safe_load((REPO / "inventories/sandbox/group_vars/all/main.yml").read_text())
    name = site["slipway_domains"][0]
    root = subprocess.run(
        [sys.executable, str(REPO / "tools/pebble.py"), "root-ca"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    curl = f"curl --cacert {root} --resolve {name}:443:{lb['address']} https://{name}/health/ready"
    probe = subprocess.run(
        [*curl.split(), "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"],
        capture_output=True,
        text=True,
        check=False,
    )
    print()
    print(f"Slipway sandbox: https://{name}/ is served by {lb['name']} ({lb['address']})")
    for vm in vms:
        print(f"  {vm['name']:<16} {vm['address']:<14} {vm['state']:<9} {','.join(vm['groups'])}")
    print(f"  readiness through nginx: HTTP {probe.stdout or probe.stderr.strip()}")
    print(f"  try it:  {curl}")
    print(f"  a VM:    python3 -m tools.sandbox ssh {lb['name']}")
    mon = next((vm for vm in vms if "monitoring" in vm["groups"]), None)
    if mon is not None:
        print(
            "  metrics: .venv/bin/ansible-playbook playbooks/monitoring_status.yml"
            f" -i inventories/sandbox  (Prometheus: 127.0.0.1:9090 on {mon['name']})"
        )
    print("  remove:  make sandbox-down")
    return 0 if probe.stdout == "200" else 1


if __name__ == "__main__":
    raise SystemExit(main())
