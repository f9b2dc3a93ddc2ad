"""tools/pebble.py: argument parsing, config, inventory reading and process checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slipway_pebble", REPO / "tools" / "pebble.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["slipway_pebble"] = mod
    spec.loader.exec_module(mod)
    return mod


pebble = _load()


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


def _fake_proc(root: Path, pid: int, state: str, cmd: str) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "stat").write_text(f"{pid} (my prog) {state} 1 2 3\n")
    (d / "cmdline").write_bytes(cmd.encode() + b"\0-config\0x\0")


def test_proc_alive_checks_name_and_zombies(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 10, "S", "/usr/bin/pebble")
    _fake_proc(tmp_path, 11, "Z", "/usr/bin/pebble")
    _fake_proc(tmp_path, 12, "S", "/usr/bin/sshd")
    assert pebble.proc_alive(10, "pebble", tmp_path)
    assert not pebble.proc_alive(11, "pebble", tmp_path)
    assert not pebble.proc_alive(12, "pebble", tmp_path)
    assert not pebble.proc_alive(13, "pebble", tmp_path)


def test_ca_bundle_without_state_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pebble, "STATE", tmp_path / "none")
    assert pebble.main(["ca-bundle"]) == 1
    assert "tools/pebble.py start" in capsys.readouterr().err
