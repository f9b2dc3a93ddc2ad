"""The monitoring host's configuration, rendered by the prometheus role from a test
inventory (every tier, two web hosts, a GPU host with and one without a driver), checked
by the tools Prometheus ships: `promtool check config`, `promtool check rules` and
`promtool test rules` (rules_test.yml: every alert fires on one host and stays quiet on
another). promtool comes from Debian's prometheus package, unpacked by `make promtool`
into .cache/bin (no Prometheus service runs on this machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, AnsibleRunner

HERE = Path(__file__).resolve().parent
PROMTOOL = Path(os.environ.get("SLIPWAY_PROMTOOL", REPO / ".cache" / "bin" / "promtool"))

HOSTS: dict[str, dict[str, Any]] = {
    "lb1": {"ansible_host": "10.9.0.1"},
    "web1": {"ansible_host": "10.9.0.2"},
    "web2": {"ansible_host": "10.9.0.3"},
    "db1": {"ansible_host": "10.9.0.4"},
    # The local facts the nvitop role leaves on each gpu host (render.yml makes them facts).
    "gpu1": {"ansible_host": "10.9.0.5", "local_facts": {"nvitop": {"exporter": True}}},
    "gpu2": {"ansible_host": "10.9.0.6", "local_facts": {"nvitop": {"exporter": False}}},
}
GROUPS = {
    "lb": ["lb1"],
    "monitoring": ["lb1"],
    "web": ["web1", "web2"],
    "worker": ["web1", "gpu1", "gpu2"],
    "db": ["db1"],
    "redis": ["web1"],
    "gpu": ["gpu1", "gpu2"],
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL.is_file(), f"{PROMTOOL} is missing: run `make promtool` (make test does)"
    return subprocess.run(
        [str(PROMTOOL), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(tmp_path: Path, ansible: AnsibleRunner, **extra: Any) -> Path:
    """Render with the sandbox inventory's group_vars (Pebble's CA replaced by a stand-in)."""
    inv = tmp_path / "inventory"
    shutil.copytree(REPO / "inventories/sandbox/group_vars", inv / "group_vars")
    data = {
        "all": {
            "hosts": HOSTS,
            "children": {g: {"hosts": {h: {} for h in m}} for g, m in GROUPS.items()},
        }
    }
    (inv / "hosts.yml").write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    out.mkdir()
    extra_vars = {
        "prometheus_render_dir": str(out),
        "prometheus_rules_dir": str(out),
        "prometheus_blackbox_ca_cert": "stand-in",
        **extra,
    }
    proc = ansible(
        "ansible-playbook",
        "-i",
        str(inv),
        str(HERE / "render.yml"),
        "-e",
        yaml.safe_dump(extra_vars, default_flow_style=True).strip(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return out


def rule_tests(out: Path) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` on the rendered rules. The cases assert labels, not the
    annotation texts (promtool compares both): they run on a copy without annotations,
    while `promtool check rules` checks the real file, annotation templates included."""
    rules = yaml.safe_load((out / "slipway.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (out / "bare.rules.yml").write_text(yaml.safe_dump(rules))
    cases = yaml.safe_load((HERE / "rules_test.yml").read_text())
    cases["rule_files"] = ["bare.rules.yml"]
    (out / "rules_test.yml").write_text(yaml.safe_dump(cases))
    return promtool("test", "rules", str(out / "rules_test.yml"))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import BIN

    def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}",
                   ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")  # fmt: skip
        return subprocess.run([str(BIN / tool), *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip

    return render(tmp_path_factory.mktemp("monitoring"), run)


def test_promtool_check_config(rendered: Path) -> None:
    proc = promtool("check", "config", str(rendered / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout


def test_promtool_check_rules(rendered: Path) -> None:
    proc = promtool("check", "rules", str(rendered / "slipway.rules.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case(rendered: Path) -> None:
    rules = yaml.safe_load((rendered / "slipway.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    cases = yaml.safe_load((HERE / "rules_test.yml").read_text())["tests"]
    checks = [c for t in cases for c in t["alert_rule_test"]]
    firing = {c["alertname"] for c in checks if c["exp_alerts"]}
    assert firing == alerts
    # quiet: an eval with no alert, or a firing eval where another host of the series is absent
    quiet = {c["alertname"] for c in checks if not c["exp_alerts"]}
    assert alerts - quiet <= {"SlipwayBackupVerificationFailed", "SlipwayWalArchiveLagging",
                              "SlipwayCertificateExpiring"}  # fmt: skip


def test_promtool_rule_tests_pass(rendered: Path) -> None:
    proc = rule_tests(rendered)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_tests_catch_a_changed_threshold(tmp_path: Path, ansible: AnsibleRunner) -> None:
    """The negative control: with CPU at 95 % as the bound, web1's 90 % no longer fires and
    promtool says so."""
    out = render(tmp_path, ansible, prometheus_alert_cpu_percent=95)
    proc = rule_tests(out)
    assert proc.returncode != 0
    assert "SlipwayHighCpu" in proc.stdout + proc.stderr


def test_scrape_targets_follow_the_inventory(rendered: Path) -> None:
    config = yaml.safe_load((rendered / "prometheus.yml").read_text())
    jobs = {
        job["job_name"]: sorted(
            (s["labels"]["instance"], t) for s in job["static_configs"] for t in s["targets"]
        )
        for job in config["scrape_configs"]
    }
    assert [i for i, _ in jobs["node"]] == sorted(HOSTS)
    assert jobs["app"] == [("web1", "10.9.0.2:8000"), ("web2", "10.9.0.3:8000")]
    assert jobs["postgres"] == [("db1", "10.9.0.4:9187")]
    assert jobs["redis"] == [("web1", "10.9.0.2:9121")]
    # only the GPU host whose exporter runs (its nvitop local fact)
    assert jobs["gpu"] == [("gpu1", "10.9.0.5:9835")]
    assert jobs["ready"] == [("web1", "http://10.9.0.2:8000/health/ready"),
                             ("web2", "http://10.9.0.3:8000/health/ready")]  # fmt: skip
    assert jobs["https"] == [("lb1", "https://10.9.0.1/health/ready")]


def test_alerts_go_to_the_local_receiver_only_in_the_sandbox(rendered: Path) -> None:
    config = yaml.safe_load((rendered / "alertmanager.yml").read_text())
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert urls == ["http://127.0.0.1:9095/"]
