#!/usr/bin/env python3
"""A local ACME CA for the sandbox and tests: Pebble and pebble-challtestsrv (Debian package
`pebble`) on the sandbox bridge address, with mock DNS that maps test names to VM addresses.

    tools/pebble.py start --domain slipway.sandbox.test=10.231.0.11 [--domain ...]
    tools/pebble.py start --from-inventory inventories/sandbox   # names of the lb hosts
    tools/pebble.py status
    tools/pebble.py ca-bundle   # path of the CA of Pebble's HTTPS certificate (certbot_ca_bundle)
    tools/pebble.py root-ca     # fetch the root that issued certificates chain to; print its path
    tools/pebble.py stop        # stop both processes and remove the state directory

`start` is idempotent: running processes are kept (Pebble makes a new root CA each time it
starts, so a restart would orphan every certificate issued so far) and the DNS records are
(re)added. Listens on the bridge address only: ACME directory https://10.231.0.1:14000/dir,
Pebble management https://10.231.0.1:15000 (GET /roots/0), mock DNS 10.231.0.1:8053, DNS
management http://10.231.0.1:8055 (POST /add-a). HTTP-01 validation connects to port 80 of the
address a name resolves to. State (certificates, config, pidfiles, logs) lives in
$SLIPWAY_PEBBLE_STATE, default /var/lib/slipway-sandbox/pebble. `start` installs Pebble
(Debian package `pebble`) when it is missing, as the sandbox installs its host packages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script (python3 tools/pebble.py): find `tools`
    sys.path.insert(0, str(REPO))

from tools.sandbox import host  # noqa: E402  (after the path set-up above)

STATE = Path(os.environ.get("SLIPWAY_PEBBLE_STATE", "/var/lib/slipway-sandbox/pebble"))
ADDRESS = os.environ.get("SLIPWAY_PEBBLE_ADDRESS", "10.231.0.1")
ACME_PORT = 14000
MGMT_PORT = 15000
DNS_PORT = 8053
DNS_MGMT_PORT = 8055
WAIT_S = 20.0
STOP_WAIT_S = 5.0
FQDN = re.compile(r"^(?=.{1,253}$)((?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)+[A-Za-z]{2,63}$")
IPV4 = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


class PebbleError(host.SandboxError):
    """A failure an operator can act on; main() prints it and exits 1."""


def log(msg: str) -> None:
    host.progress(f"pebble: {msg}")


# ---- pure helpers (unit-tested) -------------------------------------------------------------


def parse_domain(arg: str) -> tuple[str, str]:
    """'name=1.2.3.4' -> ('name', '1.2.3.4'), refusing anything else with a clear message."""
    name, sep, ip = arg.partition("=")
    name, ip = name.strip().lower().rstrip("."), ip.strip()
    if not sep or not FQDN.match(name):
        raise PebbleError(f"--domain {arg!r}: expected NAME=IPV4 with a DNS name such as a.test")
    m = IPV4.match(ip)
    if not m or any(int(p) > 255 for p in m.groups()):
        raise PebbleError(f"--domain {arg!r}: {ip!r} is not an IPv4 address")
    return name, ip


def pebble_config(state: Path, address: str) -> dict[str, Any]:
    """Pebble's JSON config: HTTPS on the bridge address, HTTP-01 on port 80, TLS-ALPN on 443."""
    return {
        "pebble": {
            "listenAddress": f"{address}:{ACME_PORT}",
            "managementListenAddress": f"{address}:{MGMT_PORT}",
            "certificate": str(state / "tls-cert.pem"),
            "privateKey": str(state / "tls-key.pem"),
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }


def challtestsrv_argv(address: str) -> list[str]:
    """Mock DNS only: the challenge servers are off (nginx on the VMs answers HTTP-01), and
    unknown names resolve to nothing (not to 127.0.0.1/::1, which are the host's own)."""
    return [
        "pebble-challtestsrv",
        "-management", f"{address}:{DNS_MGMT_PORT}",
        "-dns01", f"{address}:{DNS_PORT}",
        "-http01", "",
        "-https01", "",
        "-tlsalpn01", "",
        "-defaultIPv4", "",
        "-defaultIPv6", "",
    ]  # fmt: skip


def pebble_argv(state: Path, address: str) -> list[str]:
    return ["pebble", "-config", str(state / "config.json"), "-dnsserver", f"{address}:{DNS_PORT}"]


def _group_hosts(groups: dict[str, Any], name: str, seen: set[str] | None = None) -> list[str]:
    """Hosts of a group in `ansible-inventory --list` output, children included."""
    seen = set() if seen is None else seen
    if name in seen or name not in groups:
        return []
    seen.add(name)
    group = groups[name]
    hosts = list(group.get("hosts", []))
    for child in group.get("children", []):
        hosts += [h for h in _group_hosts(groups, child, seen) if h not in hosts]
    return hosts


def domains_from_inventory(data: dict[str, Any], group: str = "lb") -> list[tuple[str, str]]:
    """(name, address) for every slipway_domains entry of every host in `group`."""
    hostvars = data.get("_meta", {}).get("hostvars", {})
    out: list[tuple[str, str]] = []
    for name in _group_hosts(data, group):
        hv = hostvars.get(name, {})
        addr = str(hv.get("ansible_host", name))
        domains = hv.get("slipway_domains", [])
        if not isinstance(domains, list):
            raise PebbleError(f"host {name}: slipway_domains is not a list ({domains!r})")
        out += [parse_domain(f"{d}={addr}") for d in domains]
    if not out:
        raise PebbleError(f"no host of group {group!r} in the inventory has slipway_domains")
    return out


# ---- side effects ---------------------------------------------------------------------------


def ensure_tls(state: Path, address: str) -> None:
    """A CA and a server certificate for the bridge address and localhost (openssl CLI)."""
    if (state / "tls-cert.pem").exists() and (state / "tls-ca.pem").exists():
        return
    log(f"making Pebble's HTTPS certificate for {address} and localhost")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    host.run(["openssl", "req", "-x509", *ec, "-days", "825", "-subj",
         "/CN=Slipway sandbox Pebble HTTPS CA", "-keyout", str(state / "tls-ca.key"),
         "-out", str(state / "tls-ca.pem"),
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])  # fmt: skip
    host.run(["openssl", "req", *ec, "-subj", "/CN=pebble", "-keyout", str(state / "tls-key.pem"),
         "-out", str(state / "tls.csr")])  # fmt: skip
    ext = state / "tls.ext"
    ext.write_text(
        f"subjectAltName=IP:{address},DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    host.run(["openssl", "x509", "-req", "-in", str(state / "tls.csr"),
         "-CA", str(state / "tls-ca.pem"), "-CAkey", str(state / "tls-ca.key"),
         "-CAcreateserial", "-days", "825",
         "-extfile", str(ext), "-out", str(state / "tls-cert.pem")])  # fmt: skip


def _pid(state: Path, name: str) -> int | None:
    try:
        pid = int((state / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if host.process_alive(pid, name) else None  # its own, not a reused PID


def _spawn(state: Path, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `name` in a session (and process group) of its own: it outlives this script."""
    proc = host.spawn(argv, state / f"{name}.log", env={**os.environ, **env}, cwd=state)
    (state / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def _wait(
    proc: subprocess.Popen[bytes], ready: Callable[[], object], state: Path, name: str
) -> None:
    """Wait (bounded) until `ready()` answers; a process that exits meanwhile is an error."""

    def answers() -> bool:
        if proc.poll() is not None:
            tail = (state / f"{name}.log").read_text(errors="replace")[-1500:]
            raise PebbleError(
                f"{name} exited while starting; its log ({state}/{name}.log):\n{tail}"
            )
        try:
            return bool(ready())
        except (OSError, urllib.error.URLError):
            return False

    host.wait_for(answers, WAIT_S, f"{name} to answer (see {state}/{name}.log)")


def _https_context(state: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(state / "tls-ca.pem"))


def _get(url: str, state: Path) -> bytes:
    with urllib.request.urlopen(url, timeout=5, context=_https_context(state)) as resp:
        body: bytes = resp.read()
        return body


def add_a_records(records: Iterable[tuple[str, str]], address: str) -> None:
    for name, ip in records:
        _post(f"http://{address}:{DNS_MGMT_PORT}/clear-a", {"host": name})  # no duplicates
        _post(f"http://{address}:{DNS_MGMT_PORT}/add-a", {"host": name, "addresses": [ip]})
        log(f"DNS: {name} -> {ip}")


def _post(url: str, payload: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        if resp.status != 200:
            raise PebbleError(f"POST {url} {payload} answered {resp.status}")


def _address_present(address: str) -> bool:
    return f" {address}/" in host.run(["ip", "-4", "-o", "addr", "show"], check=False).stdout


def fetch_root(state: Path, address: str) -> Path:
    pem = _get(f"https://{address}:{MGMT_PORT}/roots/0", state)
    (state / "root.pem").write_bytes(pem)
    return state / "root.pem"


def start(records: list[tuple[str, str]], state: Path, address: str) -> None:
    host.ensure_host_packages(["pebble", "pebble-challtestsrv", "openssl"])  # the sandbox's list
    if not _address_present(address):
        raise PebbleError(
            f"the sandbox bridge address {address} is not on this machine: bring the sandbox "
            "up first (python3 -m tools.sandbox up)"
        )
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_tls(state, address)
    (state / "config.json").write_text(json.dumps(pebble_config(state, address), indent=2) + "\n")
    if _pid(state, "pebble-challtestsrv") is None:
        proc = _spawn(state, "pebble-challtestsrv", challtestsrv_argv(address), {})
        log(f"started pebble-challtestsrv (pid {proc.pid}), DNS on {address}:{DNS_PORT}")
        _wait(proc, lambda: host.port_open(address, DNS_MGMT_PORT), state, "pebble-challtestsrv")
    else:
        log("pebble-challtestsrv already running")
    add_a_records(records, address)
    if _pid(state, "pebble") is None:
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        proc = _spawn(state, "pebble", pebble_argv(state, address), env)
        log(f"started pebble (pid {proc.pid}): https://{address}:{ACME_PORT}/dir")
        directory = f"https://{address}:{ACME_PORT}/dir"
        _wait(proc, lambda: _get(directory, state), state, "pebble")
    else:
        log("pebble already running")
    root = fetch_root(state, address)
    log(f"ACME directory https://{address}:{ACME_PORT}/dir; CA bundle for it {state}/tls-ca.pem; "
        f"root of issued certificates {root}")  # fmt: skip


def stop(state: Path) -> None:
    for name in ("pebble", "pebble-challtestsrv"):
        pid = _pid(state, name)
        if pid is None:
            continue
        host.stop_process(pid, STOP_WAIT_S, group=True)
        log(f"stopped {name} (pid {pid})")
    if state.exists():
        shutil.rmtree(state)
        log(f"removed {state}")


def _inventory(path: str) -> dict[str, Any]:
    exe = shutil.which("ansible-inventory") or str(REPO / ".venv" / "bin" / "ansible-inventory")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run([exe, "-i", path, "--list"], capture_output=True, text=True, env=env,
                          cwd=REPO, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise PebbleError(f"ansible-inventory -i {path} failed: {proc.stderr.strip()[-500:]}")
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_start = sub.add_parser("start", help="start Pebble (if not running) and add DNS records")
    p_start.add_argument("--domain", action="append", default=[], metavar="NAME=IP")
    p_start.add_argument("--from-inventory", metavar="DIR",
                         help="add the slipway_domains of the inventory's lb hosts")  # fmt: skip
    sub.add_parser("stop", help="stop Pebble and remove its state directory")
    sub.add_parser("status", help="say what runs; exit 0 when both processes do")
    sub.add_parser("ca-bundle", help="print the path of the CA of Pebble's HTTPS certificate")
    sub.add_parser("root-ca", help="fetch the root CA of issued certificates, print its path")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "start":
            records = [parse_domain(d) for d in args.domain]
            if args.from_inventory:
                records += domains_from_inventory(_inventory(args.from_inventory))
            start(records, STATE, ADDRESS)
        elif args.cmd == "stop":
            stop(STATE)
        elif args.cmd == "status":
            pids = {n: _pid(STATE, n) for n in ("pebble", "pebble-challtestsrv")}
            for name, pid in pids.items():
                print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
            return 0 if all(pids.values()) else 1
        elif args.cmd == "ca-bundle":
            bundle = STATE / "tls-ca.pem"
            if not bundle.exists():
                raise PebbleError(f"{bundle} does not exist: run `tools/pebble.py start` first")
            print(bundle)
        elif args.cmd == "root-ca":
            if _pid(STATE, "pebble") is None:
                raise PebbleError("pebble is not running: run `tools/pebble.py start` first")
            print(fetch_root(STATE, ADDRESS))
    except host.SandboxError as exc:  # PebbleError, or a command or package install that failed
        log(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
