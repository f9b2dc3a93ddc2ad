"""Bad input stops `site.yml` in preflight, with a sentence naming what to fix,
before any host is contacted. The hosts point at a closed port on loopback, so
a run that got past the inventory checks shows up as UNREACHABLE (the positive
control). The checks made on the hosts (ports taken) run on a real VM in
tests/vm/test_preflight_on_host.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import AnsibleRunner

REPO = Path(__file__).resolve().parents[2]
ALL_GROUPS = ("lb", "web", "worker", "db", "redis", "monitoring")


def inventory(
    tmp_path: Path,
    groups: dict[str, list[str]],
    host_vars: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> Path:
    inv = tmp_path / "inventory"
    shutil.copytree(REPO / "inventories/sandbox/group_vars", inv / "group_vars")
    hosts = sorted({h for members in groups.values() for h in members})
    data = {
        "all": {
            "vars": {"ansible_host": "127.0.0.1", "ansible_port": 1},
            "hosts": {h: (host_vars or {}).get(h, {}) for h in hosts},
            "children": {g: {"hosts": {h: {} for h in m}} for g, m in groups.items()},
        }
    }
    (inv / "hosts.yml").write_text(yaml.safe_dump(data))
    secrets = inv / "group_vars/all/secrets.yml"
    values = yaml.safe_load(secrets.read_text())
    # The sandbox reads Pebble's root for the HTTPS probe; no Pebble runs for these tests (the
    # monitoring inputs' argument check reads every option, this one too).
    extra: dict[str, Any] = {"prometheus_blackbox_ca_cert": "stand-in"}
    for key, value in overrides.items():
        if value is None:
            values.pop(key, None)
        elif key.startswith("vault_"):
            values[key] = value
        else:
            extra[key] = value
    (inv / "group_vars/all/zz_test.yml").write_text(yaml.safe_dump(extra))
    secrets.write_text(yaml.safe_dump(values))
    return inv


def site(ansible: AnsibleRunner, inv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return ansible(
        "ansible-playbook",
        "-i",
        str(inv),
        "site.yml",
        *args,
        env={"ANSIBLE_SSH_ARGS": "-o ConnectTimeout=2"},
    )


AIO = {g: ["aio"] for g in ALL_GROUPS}


def test_good_input_passes_preflight(tmp_path: Path, ansible: AnsibleRunner) -> None:
    proc = site(ansible, inventory(tmp_path, AIO))
    assert "UNREACHABLE" in proc.stdout, proc.stdout[-3000:]
    # the inventory checks passed, and the checks on the hosts tried to reach them
    assert "PLAY [Preflight on the hosts]" in proc.stdout


@pytest.mark.parametrize(
    ("groups", "overrides", "expected"),
    [
        pytest.param(
            AIO,
            {"slipway_domains": ["bad_name!.example"]},
            "slipway_domains must list DNS names",
            id="invalid-domain",
        ),
        pytest.param(
            AIO,
            {"slipway_domains": ["https://www.example.com"]},
            "these are invalid",
            id="domain-with-scheme",
        ),
        pytest.param(
            AIO,
            {"vault_slipway_db_password": None},
            "vault_slipway_db_password is missing",
            id="missing-vault-secret",
        ),
        pytest.param(
            AIO,
            {"vault_slipway_secret_key": "CHANGE-ME-please-now"},
            "vault_slipway_secret_key",
            id="placeholder-secret",
        ),
        pytest.param({**AIO, "db": []}, {}, "exactly\none in `db`", id="no-db-host"),
        pytest.param({**AIO, "db": ["aio", "db2"]}, {}, "db=['aio', 'db2']", id="two-db-hosts"),
        pytest.param(
            {**AIO, "ungrouped": ["stray"]},
            {},
            "Host stray is in none of the groups",
            id="host-in-no-group",
        ),
        pytest.param(
            {**AIO, "gpu": ["aio", "gpu1"]},
            {},
            "gpu1 is in the `gpu` group but not in `worker`",
            id="gpu-host-not-worker",
        ),
        pytest.param(
            AIO,
            {"slipway_environment": "production"},
            "slipway_environment is",
            id="unknown-environment",
        ),
        # The monitoring tier runs last; its inputs are checked before the first tier.
        pytest.param(
            AIO,
            {"prometheus_alert_cpu_percent": 180},
            "An alert threshold on aio is out of range",
            id="monitoring-threshold",
        ),
        pytest.param(
            AIO,
            {"prometheus_alert_cpu_percent": "eighty"},
            "argument 'prometheus_alert_cpu_percent' is of type str",
            id="monitoring-threshold-not-a-number",
        ),
        pytest.param(
            AIO,
            {"prometheus_alert_webhook_urls": ["alerts.example.com/hook"]},
            "set prometheus_alert_webhook_urls to a list of http(s) URLs",
            id="monitoring-webhook-not-a-url",
        ),
        pytest.param(
            AIO,
            {"prometheus_alert_webhook_urls": "https://alerts.example.com/hook"},
            "prometheus_alert_webhook_urls",
            id="monitoring-webhook-not-a-list",
        ),
        pytest.param(
            {**AIO, "gpu": ["aio"]},
            {"nvitop_exporter_port": 70000},
            "nvitop_exporter_port a TCP port (70000)",
            id="nvitop-port",
        ),
        pytest.param(
            AIO,
            {"exporters_node_port": 9121},
            "the node, postgres and redis exporter ports must differ",
            id="exporter-ports-clash",
        ),
    ],
)
def test_bad_input_stops_in_preflight(
    tmp_path: Path,
    ansible: AnsibleRunner,
    groups: dict[str, list[str]],
    overrides: dict[str, Any],
    expected: str,
) -> None:
    proc = site(ansible, inventory(tmp_path, groups, **overrides))
    out = proc.stdout
    assert proc.returncode != 0
    flat = " ".join(out.split())
    assert " ".join(expected.split()) in flat, out[-3000:]
    # nothing after the inventory checks ran, and no host was contacted
    assert "PLAY [Preflight on the hosts]" not in out
    assert "UNREACHABLE" not in out


# Peers' firewalls and pg_hba name each host by its slipway_private_address, which
# must be known without contacting the host: also for a host outside --limit.
SPLIT = {"lb": ["edge"], **{g: ["aio"] for g in ALL_GROUPS if g != "lb"}}
NAMED = {"edge": {"ansible_host": "edge.example.com"}}


def test_unknown_private_address_stops_in_preflight_under_limit(
    tmp_path: Path, ansible: AnsibleRunner
) -> None:
    proc = site(ansible, inventory(tmp_path, SPLIT, host_vars=NAMED), "--limit", "aio")
    flat = " ".join(proc.stdout.split())
    assert proc.returncode != 0
    assert "The private address of edge is unknown" in flat, proc.stdout[-3000:]
    assert "Set slipway_private_address" in flat
    assert "PLAY [Preflight on the hosts]" not in proc.stdout
    assert "UNREACHABLE" not in proc.stdout


def test_private_address_set_by_hand_passes_preflight(
    tmp_path: Path, ansible: AnsibleRunner
) -> None:
    named = {"edge": {**NAMED["edge"], "slipway_private_address": "10.0.0.5"}}
    proc = site(ansible, inventory(tmp_path, SPLIT, host_vars=named), "--limit", "aio")
    assert "is unknown" not in proc.stdout, proc.stdout[-3000:]
    assert "PLAY [Preflight on the hosts]" in proc.stdout
