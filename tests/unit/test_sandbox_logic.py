"""tools/sandbox/ logic that needs neither root nor VMs: arguments, addresses, the
inventory, network rules, the base recipe, processes and the host package list."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import pytest

from tools.sandbox import cli, host, image, network, state, vms

REPO = Path(__file__).resolve().parents[2]


def up_args(*argv: str) -> argparse.Namespace:
    return cli.parser().parse_args(["up", *argv])


# --- what `up` is asked for --------------------------------------------------------------


def test_up_defaults_to_the_all_in_one_vm_of_the_sandbox_cluster() -> None:
    args = up_args()
    assert args.cluster == "sandbox"
    assert cli.wanted_vms(args) == {
        "slipway-aio": ["lb", "web", "worker", "db", "redis", "monitoring"]
    }
    assert cli.inventory_path(args) == REPO / "inventories" / "sandbox" / "hosts.yml"


def test_split_topology_has_three_vms() -> None:
    assert cli.wanted_vms(up_args("--topology", "split")) == {
        "slipway-lb": ["lb", "monitoring"],
        "slipway-app": ["web", "worker", "redis"],
        "slipway-db": ["db"],
    }


def test_vm_specs_replace_the_topology_and_other_clusters_write_no_inventory() -> None:
    args = up_args("--cluster", "molecule-x", "--vm", "a:web,db", "--vm=b")
    assert cli.wanted_vms(args) == {"a": ["web", "db"], "b": []}
    assert cli.inventory_path(args) is None
    assert cli.inventory_path(up_args("--inventory", "-")) is None
    assert cli.inventory_path(up_args("--cluster", "c", "--inventory", "/x.yml")) == Path("/x.yml")


def test_a_vm_given_twice_is_refused() -> None:
    with pytest.raises(host.SandboxError, match="given twice"):
        cli.wanted_vms(up_args("--vm", "a:web", "--vm", "a:db"))


def test_parses_vm_specs() -> None:
    assert state.parse_vm_spec("web-1:web,worker") == ("web-1", ["web", "worker"])
    assert state.parse_vm_spec("bare") == ("bare", [])


@pytest.mark.parametrize(
    ("spec", "message"),
    [("x:nosuch", "unknown group"), ("bad_name:web", "letters, digits"), (":web", "letters")],
)
def test_rejects_bad_vm_specs(spec: str, message: str) -> None:
    with pytest.raises(host.SandboxError, match=message):
        state.parse_vm_spec(spec)


# --- state: addresses ----------------------------------------------------------------------


def test_allocates_the_lowest_free_address() -> None:
    assert state.allocate_address(set()) == "10.231.0.10"
    assert state.allocate_address({"10.231.0.10", "10.231.0.12"}) == "10.231.0.11"


def test_refuses_when_the_network_is_full() -> None:
    taken = {str(h) for h in state.NETWORK.hosts()}
    with pytest.raises(host.SandboxError, match="no free address"):
        state.allocate_address(taken)


def test_addresses_do_not_collide_across_clusters() -> None:
    st = state.State()
    first = state.claim(st, "a", "one", ["web"])
    second = state.claim(st, "b", "two", ["db"])
    again = state.claim(st, "a", "one", ["web", "lb"])
    assert (first.address, second.address) == ("10.231.0.10", "10.231.0.11")
    assert again is first and again.groups == ["web", "lb"]
    with pytest.raises(host.SandboxError, match="belongs to cluster one"):
        state.claim(st, "a", "two", [])


# --- what `up` writes ----------------------------------------------------------------------


def test_inventory_carries_connection_vars_hosts_and_every_group() -> None:
    yaml = pytest.importorskip("yaml")
    machines = [
        state.Vm("a", "c", "10.231.0.10", ["lb", "web"]),
        state.Vm("b", "c", "10.231.0.11", ["db"]),
    ]
    data = yaml.safe_load(cli.render_inventory(machines, Path("/k/id")))["all"]
    assert data["vars"]["ansible_user"] == "root"
    assert data["vars"]["ansible_ssh_private_key_file"] == "/k/id"
    assert data["vars"]["ansible_python_interpreter"] == "/usr/bin/python3"
    assert "UserKnownHostsFile=/dev/null" in data["vars"]["ansible_ssh_common_args"]
    assert data["vars"]["slipway_sandbox_bridge_address"] == "10.231.0.1"
    assert data["hosts"] == {
        "a": {"ansible_host": "10.231.0.10"},
        "b": {"ansible_host": "10.231.0.11"},
    }
    assert set(data["children"]["lb"]["hosts"]) == {"a"}
    assert set(data["children"]["db"]["hosts"]) == {"b"}
    assert data["children"]["gpu"]["hosts"] == data["children"]["redis"]["hosts"] == {}


def test_vm_hosts_file_names_localhost_itself_and_the_mirrors() -> None:
    text = vms.render_hosts("vm1", {"deb.debian.org": ["192.0.2.7", "192.0.2.8"]})
    assert text.splitlines() == [
        "127.0.0.1 localhost",
        "127.0.1.1 vm1",
        "::1 localhost ip6-localhost",
        "192.0.2.7 deb.debian.org",
    ]


# --- network, apt proxy, base image ---------------------------------------------------------


def test_only_the_mirror_on_80_443_is_forwarded_and_the_drop_comes_last() -> None:
    rules = network.iptables_rules(["192.0.2.7"])
    forward = [rule for table, rule in rules if table == "filter"]
    assert all(rule[-4:] == ["-m", "comment", "--comment", "slipway-sandbox"] for _, rule in rules)
    assert "DROP" in forward[-1]
    assert not any("DROP" in rule for rule in forward[:-1])
    accepts = [rule for rule in forward if "-d" in rule]
    assert accepts == [
        [
            "FORWARD",
            *["-i", "slipbr0", "-d", "192.0.2.7", "-p", "tcp", "-m", "multiport"],
            *["--dports", "80,443", "-j", "ACCEPT", "-m", "comment", "--comment"],
            "slipway-sandbox",
        ]
    ]
    nat = [rule for table, rule in rules if table == "nat"]
    assert len(nat) == 1 and "MASQUERADE" in nat[0] and "192.0.2.7" in nat[0]
    assert [t for t, _ in network.iptables_rules([])].count("nat") == 0


def test_apt_proxy_config_is_private() -> None:
    conf = network.acng_config(Path("/s/acng"))
    assert "CacheDir: /s/acng/cache\n" in conf
    assert "BindAddress: 10.231.0.1\n" in conf and "Port: 3142\n" in conf


def test_the_base_is_rebuilt_when_its_recipe_or_the_host_cas_change() -> None:
    hooks = image.base_recipe("ssh-ed25519 AAAA test")
    digest = image.recipe_digest(hooks, [])
    assert digest == image.recipe_digest(list(hooks), [])
    assert digest != image.recipe_digest(hooks, ["-----BEGIN CERTIFICATE-----"])
    assert digest != image.recipe_digest(image.base_recipe("ssh-ed25519 BBBB test"), [])


# --- processes -----------------------------------------------------------------------------


def test_a_zombie_or_missing_process_counts_as_gone() -> None:
    assert host.process_alive(os.getpid()) is True
    assert host.process_alive(1 << 30) is False
    child = subprocess.Popen(["true"])  # exits at once; not reaped until wait()
    deadline = time.monotonic() + 5
    stat = Path(f"/proc/{child.pid}/stat")
    while " Z " not in stat.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert " Z " in stat.read_text()
    assert host.process_alive(child.pid) is False
    child.wait()


def _fake_proc(root: Path, pid: int, status: str, argv: list[str]) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "stat").write_text(f"{pid} (my prog) {status} 1 2 3\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_a_marker_tells_our_process_from_a_reused_pid(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 10, "S", ["pebble", "-config", "x"])
    _fake_proc(tmp_path, 11, "Z", ["pebble", "-config", "x"])
    _fake_proc(tmp_path, 12, "S", ["pebble-challtestsrv", "-dns01", "x"])
    _fake_proc(tmp_path, 13, "S", ["systemd-nspawn", "--boot", "--machine=vm1"])
    assert host.process_alive(10, "pebble", tmp_path)
    assert not host.process_alive(11, "pebble", tmp_path)  # a zombie
    assert not host.process_alive(12, "pebble", tmp_path)  # another program
    assert not host.process_alive(14, "pebble", tmp_path)  # no such process
    assert host.process_alive(13, "--machine=vm1", tmp_path)
    assert not host.process_alive(13, "--machine=vm", tmp_path)  # a word, not a substring


# --- host packages ---------------------------------------------------------------------------


def test_one_list_holds_the_sandbox_and_pebble_packages() -> None:
    packages = set(host.HOST_PACKAGES.values())
    assert {"systemd-container", "mmdebstrap", "iptables", "apt-cacher-ng", "pebble"} <= packages
    assert host.HOST_PACKAGES["pebble-challtestsrv"] == "pebble"


def test_only_the_packages_of_missing_commands_are_selected_once_each() -> None:
    table = {"pebble": "pebble", "pebble-challtestsrv": "pebble", "ip": "iproute2", "x": "xpkg"}
    present = {"ip"}

    def which(command: str) -> str | None:
        return f"/usr/bin/{command}" if command in present else None

    assert host.missing_packages(table, which=which) == ["pebble", "xpkg"]
    assert host.missing_packages(table, ["pebble", "ip"], which=which) == ["pebble"]
    assert host.missing_packages(table, ["ip", "unknown"], which=which) == []
    present.update(table)
    assert host.missing_packages(table, which=which) == []


def test_the_list_is_extended_from_the_environment() -> None:
    env = {host.EXTRA_PACKAGES_ENV: "hello=hello  figlet=figlet"}
    assert host.extra_packages(env) == {"hello": "hello", "figlet": "figlet"}
    assert host.extra_packages({}) == {}
    with pytest.raises(host.SandboxError, match="COMMAND=PACKAGE"):
        host.extra_packages({host.EXTRA_PACKAGES_ENV: "hello"})


@pytest.mark.parametrize("commands", [None, ["pebble"]])
def test_every_install_check_ensures_the_extra_packages(
    commands: list[str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed: list[list[str]] = []
    monkeypatch.setenv(host.EXTRA_PACKAGES_ENV, "no-such-command-here=nosuchpkg")
    monkeypatch.setattr(host, "install_host_packages", installed.append)
    assert "nosuchpkg" in host.ensure_host_packages(commands)
    assert installed and "nosuchpkg" in installed[0]


def test_installing_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(host, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    with pytest.raises(host.SandboxError, match="needs root"):
        host.install_host_packages(["hello"])


# --- the command line ------------------------------------------------------------------------


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(host.SandboxError, match="needs root"):
        cli.prepare_host()


@pytest.mark.parametrize(
    "argv",
    [["status", "--cluster", "Bad_Name"], ["up", "--vm", "x:nosuch"], ["down"], ["host"]],
)
def test_operator_errors_exit_2_with_one_sentence(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sandbox: ") and "\n" not in err
