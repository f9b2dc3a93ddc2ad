"""Every Molecule scenario, run for real on sandbox VMs (create, converge,
idempotence, verify, destroy), so that `make test` reports them in pytest's
summary. Each scenario is its own xdist group and runs beside the others."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import needs_vms

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(
    p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml") if p.parent.name != "shared"
)
LOG_DIR = REPO / ".cache" / "molecule-logs"
# The longest a scenario may take before it is stopped and reported.
TIMEOUT_S = int(os.environ.get("SLIPWAY_MOLECULE_TIMEOUT", "3600"))


@pytest.mark.vm
@needs_vms
@pytest.mark.parametrize(
    "scenario", [pytest.param(s, marks=pytest.mark.xdist_group(f"molecule-{s}")) for s in SCENARIOS]
)
def test_molecule_scenario(scenario: str) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{scenario}.log"
    bindir = REPO / ".venv" / "bin"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", ANSIBLE_FORCE_COLOR="0")
    env.pop("ANSIBLE_CONFIG", None)  # each scenario names the project's ansible.cfg itself
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [str(bindir / "molecule"), "test", "-s", scenario],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S,
            check=False,
        )
    elapsed = time.monotonic() - started
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    assert proc.returncode == 0, (
        f"molecule test -s {scenario} failed (exit {proc.returncode}) after {elapsed:.0f} s; "
        f"full log: {log}\n{tail}"
    )
