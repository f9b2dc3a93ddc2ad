"""tools/pebble.py: argument parsing, config, inventory reading; its process, port and
package helpers are the sandbox's (tools/sandbox/host.py, tested in test_sandbox_logic.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import pebble
from tools.sandbox import host


def test_parse_domain_accepts_name_and_ipv4() -> None:
    assert pebble.parse_domain("Slipway.Sandbox.Test.=10.231.0.11") == (
        "slipway.sandbox.test",
        "10.231.0.11",
    )


@pytest.mark.parametrize(
    "arg", ["slipway.sandbox.test", "nodot=10.0.0.1", "a.test=10.0.0.256", "a.test=::1", "=1.2.3.4"]
)
def test_parse_domain_refuses_bad_input(arg: str) -> None:
    with pytest.raises(pebble.PebbleError, match="--domain"):
        pebble.parse_domain(arg)


def test_config_listens_on_the_bridge_and_validates_on_port_80(tmp_path: Path) -> None:
    cfg = pebble.pebble_config(tmp_path, "10.231.0.1")["pebble"]
    assert cfg["listenAddress"] == "10.231.0.1:14000"
    assert cfg["managementListenAddress"] == "10.231.0.1:15000"
    assert cfg["httpPort"] == 80
    assert cfg["tlsPort"] == 443
    assert cfg["certificate"] == str(tmp_path / "tls-cert.pem")


def test_challtestsrv_serves_dns_only() -> None:
    argv = pebble.challtestsrv_argv("10.231.0.1")
    opts = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert opts["-dns01"] == "10.231.0.1:8053"
    assert opts["-http01"] == opts["-https01"] == opts["-tlsalpn01"] == ""
    assert opts["-defaultIPv4"] == opts["-defaultIPv6"] == ""


def test_pebble_uses_the_mock_dns(tmp_path: Path) -> None:
    assert pebble.pebble_argv(tmp_path, "10.231.0.1")[-2:] == ["-dnsserver", "10.231.0.1:8053"]


def test_domains_from_inventory_follows_children() -> None:
    data = {
        "_meta": {
            "hostvars": {
                "vm1": {"ansible_host": "10.231.0.11", "slipway_domains": ["a.test", "www.a.test"]},
                "vm2": {"ansible_host": "10.231.0.12", "slipway_domains": ["b.test"]},
            }
        },
        "all": {"children": ["lb", "web"]},
        "lb": {"hosts": ["vm1"], "children": ["edge"]},
        "edge": {"hosts": ["vm2"]},
        "web": {"hosts": ["vm3"]},
    }
    assert pebble.domains_from_inventory(data) == [
        ("a.test", "10.231.0.11"),
        ("www.a.test", "10.231.0.11"),
        ("b.test", "10.231.0.12"),
    ]


def test_domains_from_inventory_needs_domains() -> None:
    with pytest.raises(pebble.PebbleError, match="slipway_domains"):
        pebble.domains_from_inventory({"_meta": {"hostvars": {}}, "lb": {"hosts": ["x"]}})


def test_a_pid_file_counts_only_while_its_program_runs(tmp_path: Path) -> None:
    (tmp_path / "pebble.pid").write_text("1\n")  # PID 1 is not Pebble
    assert pebble._pid(tmp_path, "pebble") is None
    (tmp_path / "pebble.pid").write_text("garbage\n")
    assert pebble._pid(tmp_path, "pebble") is None


def test_start_installs_pebble_through_the_sandbox_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[list[str]] = []

    def ensure(commands: list[str]) -> list[str]:
        asked.append(list(commands))
        raise host.SandboxError("stop here")

    monkeypatch.setattr(host, "ensure_host_packages", ensure)
    with pytest.raises(host.SandboxError, match="stop here"):
        pebble.start([], tmp_path, "10.231.0.1")
    assert asked == [["pebble", "pebble-challtestsrv", "openssl"]]
    assert all(command in host.HOST_PACKAGES for command in asked[0])


def test_ca_bundle_without_state_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pebble, "STATE", tmp_path / "none")
    assert pebble.main(["ca-bundle"]) == 1
    assert "tools/pebble.py start" in capsys.readouterr().err
