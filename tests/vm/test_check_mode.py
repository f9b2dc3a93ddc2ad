"""Dry runs and phase tags on one real VM (README, "Dry run first" and "Tags").

One all-in-one Debian 12 VM, in steps that build on each other:

1. bare: `site.yml --check --diff` fails nothing, ignores nothing, lists the packages
   and files it would add, skips (not ignores) what needs a package not yet there,
   and leaves the host as it was;
2. `site.yml` converges it;
3. converged: `site.yml --check --diff` reports changed=0, and the tasks a bare host
   skipped run (units, migrations, the interpreter check);
4. `site.yml --tags configure` runs end to end, with every role's preflight and the
   app's release id, changed=0, and no task of another phase;
5. a real fault on the converged host (a unit file gone, an unusable interpreter) fails
   the dry run too: the check-mode convention hides nothing.

Certificates come from the shared Pebble (started, never stopped, with this VM's name)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AnsibleRunner, needs_vms

REPO = Path(__file__).resolve().parents[2]
CLUSTER, VM = "tg-checkmode", "tg-checkmode-aio"
DOMAIN = "checkmode.sandbox.test"
GROUPS = "lb,web,worker,db,redis,monitoring,gpu"

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group("check-mode"), needs_vms]


def run(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def on_vm(script: str) -> str:
    """Run a shell command line on the VM; its stdout."""
    proc = run("-m", "tools.sandbox", "ssh", VM, "--", script)
    assert proc.returncode == 0, f"{script}: {proc.stdout[-1000:]} {proc.stderr[-1000:]}"
    return proc.stdout


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[Path]:
    """The sandbox inventory's group_vars (linked, as the Molecule scenarios do) with this
    VM as every tier under a name of its own, and that name in Pebble's DNS."""
    inv = tmp_path / "inventory"
    (inv / "host_vars").mkdir(parents=True)
    (inv / "group_vars").symlink_to(REPO / "inventories" / "sandbox" / "group_vars")
    (inv / "host_vars" / f"{VM}.yml").write_text(f"---\nslipway_domains:\n  - {DOMAIN}\n")
    run("-m", "tools.sandbox", "down", "--cluster", CLUSTER)
    up = run("-m", "tools.sandbox", "up", "--cluster", CLUSTER, f"--vm={VM}:{GROUPS}",
             "--inventory", str(inv / "hosts.yml"), "--json")  # fmt: skip
    assert up.returncode == 0, up.stderr[-2000:]
    [row] = json.loads(up.stdout)["vms"]
    pebble = run("tools/pebble.py", "start", f"--domain={DOMAIN}={row['address']}")
    assert pebble.returncode == 0, pebble.stderr[-2000:]
    yield inv
    run("-m", "tools.sandbox", "down", "--cluster", CLUSTER)


def recap(out: str) -> dict[str, int]:
    m = re.search(rf"^{re.escape(VM)}\s+:\s+(.*)$", out.split("PLAY RECAP")[-1], re.M)
    assert m, out[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def results(out: str, task: str) -> list[str]:
    """How each run of the task titled `role : name` ended: ok, changed, skipping, fatal..."""
    found = []
    for block in re.split(r"^(?=TASK \[|RUNNING HANDLER \[)", out, flags=re.M):
        if block.startswith((f"TASK [{task}]", f"RUNNING HANDLER [{task}]")):
            found += re.findall(
                rf"^(ok|changed|skipping|fatal|failed): \[{re.escape(VM)}", block, re.M
            )
    return found


# Tasks that cannot run before their package (or the app's release) is on the host: a dry
# run skips them on a bare host and runs them on a converged one.
NEED_PACKAGES = [
    "base : Enable nftables at boot and start it",
    "postgresql : Enable the cluster at boot and start it",
    "redis : Enable redis-server at boot and start it",
    "python : Fail when the interpreter is missing, too old or lacks venv",
    "app : Ask whether the database is at the release's head revision",
    "app : Run the web socket and service on web hosts (stopped elsewhere)",
    "app : Run beat on the beat host only",
    "nginx : Enable and start nginx",
    "certbot : Enable and start the renewal timer",
    "exporters : Enable the exporters at boot and start them",
    "nvitop : Ask NVML whether an NVIDIA driver is present",
    "nvitop : Run nvitop-exporter where the driver answers",
    "prometheus : Write the alert rules (checked with promtool)",
    "prometheus : Enable Prometheus, Alertmanager and the blackbox exporter at boot and start them",
]
# One check of each role's preflight, which runs under every phase tag.
PREFLIGHTS = [
    "base : Check that this is Debian 12",
    "postgresql : Check the database and role names",
    "redis : Check the app user's name and password",
    "python : Check the interpreter settings",
    "app : Check the secrets and connection URLs",
    "nginx : Check the server names",
    "certbot : Check the certificate's names",
    "exporters : Look for the exporters' packages",
    "nvitop : Look at what the venv holds",
    "prometheus : Look for the Prometheus packages",
]

# Tasks of the configure phase, and of others that `--tags configure` must leave alone.
CONFIGURE = [
    "app : Write the EnvironmentFile (secrets; checked by `slipway-app check-config`)",
    "nginx : Write the site (default server, HTTP redirect, ACME path, HTTPS proxy)",
    "postgresql : Write pg_hba.conf",
    "exporters : Write the node exporter's flags",
    "prometheus : Write the scrape config (checked with promtool)",
]
OTHER_PHASES = [
    "nginx : Install nginx and openssl",
    "app : Run beat on the beat host only",
    "certbot : Enable and start the renewal timer",
    "base : Create the app's group",
]


def test_dry_runs_and_the_configure_tag_on_a_bare_then_converged_vm(
    inventory: Path, ansible: AnsibleRunner
) -> None:
    took: list[str] = []

    def playbook(*args: str) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        proc = ansible("ansible-playbook", "-i", str(inventory), "site.yml", *args, timeout=1500)
        took.append(f"site.yml {' '.join(args)}: {time.monotonic() - start:.0f} s")
        print(took[-1])  # pytest -s shows how long each step took
        return proc

    # 1. Bare host, dry run: no failure, nothing ignored, the changes listed, the host untouched.
    bare = playbook("--check", "--diff")
    counts = recap(bare.stdout)
    assert bare.returncode == 0 and counts["failed"] == 0, bare.stdout[-4000:]
    assert counts["ignored"] == 0 and counts["changed"] > 20, counts
    assert "The following NEW packages will be installed" in bare.stdout
    for package in ("nginx", "postgresql-15", "redis-server", "certbot"):
        assert re.search(rf"^\s.*\b{re.escape(package)}\b", bare.stdout, re.M), package
    assert bare.stdout.count("+++ after") > 20  # file and link diffs
    for task in NEED_PACKAGES:
        assert set(results(bare.stdout, task)) == {"skipping"}, (task, results(bare.stdout, task))
    assert on_vm("dpkg-query -W nginx postgresql-15 2>/dev/null | wc -l").strip() == "0"
    assert on_vm("test -e /etc/slipway || echo absent").strip() == "absent"

    # 2. Converge.
    converge = playbook()
    assert converge.returncode == 0 and recap(converge.stdout)["failed"] == 0, converge.stdout[
        -4000:
    ]

    # 3. Converged host, dry run: nothing to change, and the skipped tasks now run.
    dry = playbook("--check", "--diff")
    counts = recap(dry.stdout)
    assert dry.returncode == 0, dry.stdout[-4000:]
    assert (counts["changed"], counts["failed"], counts["ignored"]) == (0, 0, 0), (
        counts, [line for line in dry.stdout.splitlines() if line.startswith("changed:")],
    )  # fmt: skip
    for task in NEED_PACKAGES:
        assert set(results(dry.stdout, task)) == {"ok"}, (task, results(dry.stdout, task))

    # 4. One phase across the site: every role's preflight, the release id, nothing else.
    configure = playbook("--tags", "configure")
    counts = recap(configure.stdout)
    assert configure.returncode == 0 and counts["failed"] == 0, configure.stdout[-4000:]
    assert counts["changed"] == 0, counts
    for task in [*PREFLIGHTS, *CONFIGURE]:
        assert results(configure.stdout, task) == ["ok"], (task, configure.stdout[-3000:])
    assert "TASK [Check the domain names]" in configure.stdout  # the site preflight
    for other in OTHER_PHASES:
        assert f"TASK [{other}]" not in configure.stdout, other

    # 5. A real fault on a converged host fails its dry run: nothing hides it.
    unit = "/lib/systemd/system/certbot.timer"
    on_vm(f"mv {unit} /root/certbot.timer && systemctl daemon-reload")
    try:
        gone = playbook("--check", "--tags", "certbot")
    finally:
        on_vm(f"mv /root/certbot.timer {unit} && systemctl daemon-reload")
    counts = recap(gone.stdout)
    assert gone.returncode != 0 and counts["failed"] == 1 and counts["ignored"] == 0, counts
    assert results(gone.stdout, "certbot : Enable and start the renewal timer") == ["fatal"]
    assert "Could not find the requested service certbot.timer" in gone.stdout

    bad = playbook("--check", "--tags", "python", "-e", "python_interpreter=/usr/bin/python3.99")
    counts = recap(bad.stdout)
    assert bad.returncode != 0 and counts["failed"] == 1 and counts["ignored"] == 0, counts
    assert "/usr/bin/python3.99 on " + VM + " is not usable" in " ".join(bad.stdout.split())
