"""The `python3 -m tools.release_trial` command line: its arguments, and main."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __doc__ as USAGE
from .config import PLAYBOOK_TIMEOUT_S, REPO, STEPS, TrialError
from .steps import Trial


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="release_trial",
        description=USAGE,
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
