"""A host package that is missing is installed, with a progress line, by the sandbox's
`up` and by the Pebble helper, from the one list in tools/sandbox/host.py, rather than
reported as an error.

The sandbox's own packages (systemd-container, pebble, ...) are in use by every other VM
test on this machine, so none of them is removed here: the list is extended, through
$SLIPWAY_SANDBOX_EXTRA_PACKAGES, with Debian's tiny `hello` (GNU Hello, one binary,
nothing else depends on it), which is purged before each step and after the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_vms

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "hello"
EXTRA = {"SLIPWAY_SANDBOX_EXTRA_PACKAGES": f"{PACKAGE}={PACKAGE}"}
CLUSTER, VM = "pt-hostpkg", "pt-hostpkg-1"

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group("host-packages"), needs_vms]


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def purge() -> None:
    apt = ["apt-get", "-qq", "-o", "DPkg::Lock::Timeout=300"]
    proc = run([*apt, "purge", "-y", PACKAGE], env={"DEBIAN_FRONTEND": "noninteractive"})
    assert proc.returncode == 0, proc.stderr
    assert shutil.which(PACKAGE) is None


def installed() -> bool:
    proc = run(["dpkg-query", "-W", "-f=${Status}", PACKAGE])
    return proc.stdout == "install ok installed"


@pytest.fixture
def no_hello() -> Iterator[None]:
    purge()
    yield
    purge()
    run([sys.executable, "-m", "tools.sandbox", "down", "--cluster", CLUSTER])


def test_up_and_the_pebble_helper_install_a_missing_host_package(no_hello: None) -> None:
    sandbox = [sys.executable, "-m", "tools.sandbox"]
    up = [*sandbox, "up", "--cluster", CLUSTER, f"--vm={VM}:web", "--inventory", "-", "--json"]

    # `up` installs it before anything else, says so, and goes on to boot the VM.
    proc = run(up, env=EXTRA)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"installing host packages: {PACKAGE}\n" in proc.stderr
    assert "host packages installed in " in proc.stderr
    assert installed()
    assert run([PACKAGE]).stdout.strip() == "Hello, world!"
    assert f"{VM}: " in proc.stderr  # booted (or already up)

    # Nothing missing: no install line.
    again = run(up, env=EXTRA)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "installing host packages" not in again.stderr

    # The Pebble helper, run on its own, installs what is missing the same way. Pointed at
    # an address this machine does not have, it then stops before starting anything.
    purge()
    pebble_env = {
        **EXTRA,
        "SLIPWAY_PEBBLE_ADDRESS": "192.0.2.1",  # TEST-NET-1: never on this machine
        "SLIPWAY_PEBBLE_STATE": "/nonexistent/slipway-pebble",
    }
    proc = run([sys.executable, "tools/pebble.py", "start"], env=pebble_env)
    assert f"installing host packages: {PACKAGE}\n" in proc.stderr
    assert installed()
    assert proc.returncode == 1
    assert "192.0.2.1 is not on this machine" in proc.stderr
    assert "is not installed" not in proc.stderr
