"""The sandbox's network: a host bridge, iptables rules that let the VMs reach only the
Debian mirror, and apt-cacher-ng on the bridge address as the VMs' apt proxy."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import socket
from pathlib import Path

from tools.sandbox import host
from tools.sandbox.state import (
    APT_PROXY_PORT,
    BRIDGE,
    HOST_ADDRESS,
    MIRRORS,
    NETWORK,
    RULE_TAG,
    STATE_DIR,
)


def mirror_addresses() -> dict[str, list[str]]:
    """The IPv4 addresses each Debian mirror name resolves to here (empty if it does not)."""
    found: dict[str, list[str]] = {}
    for name in MIRRORS:
        with contextlib.suppress(OSError):
            infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
            found[name] = sorted({str(info[4][0]) for info in infos})
    return found


def iptables_rules(mirror_ips: list[str]) -> list[tuple[str, list[str]]]:
    """(table, rule) in order: VMs reach each other and the mirror on 80/443, nothing else."""
    tag = ["-m", "comment", "--comment", RULE_TAG]
    web = ["-p", "tcp", "-m", "multiport", "--dports", "80,443"]
    established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
    rules = [
        ("filter", ["FORWARD", "-o", BRIDGE, *established, "-j", "ACCEPT", *tag]),
        # VM to VM: bridged frames cross iptables too when br_netfilter is loaded.
        ("filter", ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT", *tag]),
    ]
    for ip in mirror_ips:
        rules.append(("filter", ["FORWARD", "-i", BRIDGE, "-d", ip, *web, "-j", "ACCEPT", *tag]))
    rules.append(("filter", ["FORWARD", "-i", BRIDGE, "-j", "DROP", *tag]))
    for ip in mirror_ips:
        rules.append(
            ("nat", ["POSTROUTING", "-s", str(NETWORK), "-d", ip, *web, "-j", "MASQUERADE", *tag])
        )
    return rules


def ensure_network(mirror_ips: list[str]) -> None:
    """The bridge with the host address, IP forwarding, and exactly our iptables rules."""
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        host.progress(f"creating bridge {BRIDGE} {HOST_ADDRESS}/{NETWORK.prefixlen}")
        host.modprobe("bridge")
        if host.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=False).returncode != 0:
            raise host.SandboxError(
                "cannot create a network bridge: the kernel lacks bridge support"
            )
        host.run(["ip", "addr", "add", f"{HOST_ADDRESS}/{NETWORK.prefixlen}", "dev", BRIDGE])
    host.run(["ip", "link", "set", BRIDGE, "up"])
    forward, saved = Path("/proc/sys/net/ipv4/ip_forward"), STATE_DIR / "ip_forward.saved"
    if not saved.exists():  # restored by the last `down`
        saved.write_text(forward.read_text())
    forward.write_text("1\n")
    wanted = iptables_rules(mirror_ips)
    present = all(
        host.run(["iptables", "-w", "-t", t, "-C", *r], check=False).returncode == 0
        for t, r in wanted
    )
    if present and len(tagged_rules()) == len(wanted):
        return
    host.progress(
        f"iptables: forwarding from {BRIDGE} only to {', '.join(mirror_ips) or 'nowhere'}"
    )
    remove_rules()  # order matters (the DROP comes last): write them all again
    position = {"FORWARD": 0, "POSTROUTING": 0}
    for table, (chain, *spec) in wanted:
        position[chain] += 1  # at the top, ahead of any rule of the host's own
        host.run(["iptables", "-w", "-t", table, "-I", chain, str(position[chain]), *spec])


def tagged_rules() -> list[tuple[str, list[str]]]:
    """(table, `-A ...` words) for every iptables rule the sandbox added."""
    found = []
    for table in ("filter", "nat"):
        listing = host.run(["iptables", "-w", "-t", table, "-S"], check=False).stdout
        for line in listing.splitlines():
            words = [word.strip('"') for word in line.split()]
            if any(a == "--comment" and b == RULE_TAG for a, b in itertools.pairwise(words)):
                found.append((table, words))
    return found


def remove_rules() -> None:
    for table, words in tagged_rules():
        host.run(["iptables", "-w", "-t", table, "-D", *words[1:]], check=False)


def remove_network() -> None:
    remove_rules()
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        host.run(["ip", "link", "del", BRIDGE], check=False)
    saved = STATE_DIR / "ip_forward.saved"
    if saved.exists():
        Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.read_text())
        saved.unlink()


def acng_config(acng: Path) -> str:
    """apt-cacher-ng settings laid over its stock ones: own cache, port and address."""
    return (
        f"CacheDir: {acng / 'cache'}\nLogDir: {acng / 'log'}\nPort: {APT_PROXY_PORT}\n"
        f"BindAddress: {HOST_ADDRESS}\nForeGround: 1\nSocketPath: {acng / 'socket'}\n"
        f"PidFile: {acng / 'acng.pid'}\n"
    )


def apt_proxy_pid() -> int:
    """PID of our apt-cacher-ng (checked by its command line), 0 when it is not running."""
    pidfile = STATE_DIR / "acng" / "pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if host.process_alive(pid, str(STATE_DIR / "acng" / "conf")):
            return pid
    return 0


def ensure_apt_proxy() -> None:
    if apt_proxy_pid():
        return
    acng = STATE_DIR / "acng"
    if host.port_open(HOST_ADDRESS, APT_PROXY_PORT):
        raise host.SandboxError(
            f"port {APT_PROXY_PORT} on {HOST_ADDRESS} is taken by a process the sandbox did not "
            "start (a stock apt-cacher-ng service?): stop it and run up again"
        )
    conf = acng / "conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree("/etc/apt-cacher-ng", conf)
    for sub in ("cache", "log"):
        (acng / sub).mkdir(parents=True, exist_ok=True)
    (conf / "backends_debian").write_text("http://deb.debian.org/debian/\n")
    (conf / "zz_slipway.conf").write_text(acng_config(acng))
    host.progress(f"starting apt-cacher-ng on {HOST_ADDRESS}:{APT_PROXY_PORT}")
    proc = host.spawn(["/usr/sbin/apt-cacher-ng", "-c", str(conf)], acng / "log" / "stdout.log")
    (acng / "pid").write_text(f"{proc.pid}\n")
    host.wait_for(
        lambda: host.port_open(HOST_ADDRESS, APT_PROXY_PORT), 10, "apt-cacher-ng to listen"
    )


def stop_apt_proxy() -> None:
    pid = apt_proxy_pid()
    if pid:
        host.progress(f"stopping apt-cacher-ng (pid {pid})")
        host.stop_process(pid, 5)
    (STATE_DIR / "acng" / "pid").unlink(missing_ok=True)
