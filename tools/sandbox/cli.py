"""The `python3 -m tools.sandbox` command line: up, status, restart, down, ssh, host."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from tools.sandbox import __doc__ as USAGE
from tools.sandbox.host import (
    SandboxError,
    ensure_host_packages,
    modprobe,
    progress,
    require_root,
    run,
    sbin_on_path,
)
from tools.sandbox.image import ensure_base, ssh_key
from tools.sandbox.network import (
    ensure_apt_proxy,
    ensure_network,
    mirror_addresses,
    remove_network,
    stop_apt_proxy,
)
from tools.sandbox.state import (
    ALL_GROUPS,
    CGROUP_HIERARCHIES,
    DEFAULT_CLUSTER,
    DEFAULT_INVENTORY,
    HOST_ADDRESS,
    RULE_TAG,
    STATE_DIR,
    TOPOLOGIES,
    State,
    Vm,
    check_name,
    claim,
    locked,
    parse_vm_spec,
)
from tools.sandbox.vms import (
    boot_vm,
    destroy_vms,
    halt_vm,
    make_host_keys,
    nspawn_alive,
    prepare_vm,
    remove_cgroup,
    request_halt,
    ssh_argv,
    vm_state,
    wait_ready,
)


def wanted_vms(args: argparse.Namespace) -> dict[str, list[str]]:
    """The VMs `up` must leave running: the --vm specs, else the --topology preset."""
    if not args.vm:
        return {name: list(groups) for name, groups in TOPOLOGIES[args.topology].items()}
    wanted: dict[str, list[str]] = {}
    for spec in args.vm:
        name, groups = parse_vm_spec(spec)
        if name in wanted:
            raise SandboxError(f"VM {name} is given twice")
        wanted[name] = groups
    return wanted


def inventory_path(args: argparse.Namespace) -> Path | None:
    """Where `up` writes the inventory: --inventory, else the default cluster's file."""
    if args.inventory == "-":
        return None
    if args.inventory:
        return Path(args.inventory)
    return DEFAULT_INVENTORY if args.cluster == DEFAULT_CLUSTER else None


def prepare_host() -> None:
    """Root, every host package (installed when missing) and the kernel features VMs need."""
    require_root("the sandbox")
    ensure_host_packages()
    if not kernel_has_overlayfs():
        raise SandboxError("the kernel has no overlayfs (`modprobe overlay` failed): use a kernel")
    for ns in ("mnt", "pid", "net", "uts", "ipc"):
        if not Path(f"/proc/self/ns/{ns}").exists():
            raise SandboxError(f"the kernel has no {ns} namespaces, which systemd-nspawn needs")
    for hierarchy in CGROUP_HIERARCHIES:
        if not Path(f"/sys/fs/cgroup/{hierarchy}").is_dir():
            raise SandboxError(
                f"cgroup hierarchy /sys/fs/cgroup/{hierarchy} is missing: the sandbox expects "
                "the cgroup v1 hybrid layout (systemd, unified and memory hierarchies)"
            )


def kernel_has_overlayfs() -> bool:
    if "overlay" not in Path("/proc/filesystems").read_text():
        modprobe("overlay")
    return "overlay" in Path("/proc/filesystems").read_text()


def render_inventory(vms: list[Vm], key: Path) -> str:
    """The Ansible inventory of a cluster: every group listed, empty ones too."""
    lines = [
        "---",
        "# Written by `python3 -m tools.sandbox up`; do not edit (it is rewritten on every up).",
        "all:",
        "  vars:",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {key}",
        "    ansible_ssh_common_args: >-",
        "      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "    ansible_python_interpreter: /usr/bin/python3",
        f"    slipway_sandbox_bridge_address: {HOST_ADDRESS}",
        "  hosts:",
    ]
    for vm in vms:
        lines += [f"    {vm.name}:", f"      ansible_host: {vm.address}"]
    lines.append("  children:")
    for group in ALL_GROUPS:
        members = [vm.name for vm in vms if group in vm.groups]
        lines.append(f"    {group}:")
        lines.append("      hosts:" + ("" if members else " {}"))
        lines += [f"        {name}: {{}}" for name in members]
    return "\n".join(lines) + "\n"


def vm_row(vm: Vm, key: Path, state: str) -> dict[str, object]:
    """One VM as `--json` prints it (the keys Molecule's instance config needs included)."""
    return {
        "name": vm.name,
        "instance": vm.name,
        "cluster": vm.cluster,
        "address": vm.address,
        "groups": vm.groups,
        "state": state,
        "user": "root",
        "port": 22,
        "identity_file": str(key),
    }


def report(vms: list[Vm], as_json: bool, extra: dict[str, object] | None = None) -> None:
    key = STATE_DIR / "ssh" / "id_ed25519"
    states = {vm.name: vm_state(vm) for vm in vms}
    if as_json:
        rows = [vm_row(vm, key, states[vm.name]) for vm in vms]
        print(json.dumps({"vms": rows, **(extra or {})}, indent=2))
        return
    print(f"{'VM':<20} {'CLUSTER':<20} {'ADDRESS':<14} {'STATE':<10} GROUPS")
    for vm in vms:
        groups = ",".join(vm.groups) or "-"
        print(f"{vm.name:<20} {vm.cluster:<20} {vm.address:<14} {states[vm.name]:<10} {groups}")
    if not vms:
        print("(no VMs)")


def cmd_up(args: argparse.Namespace) -> int:
    wanted = wanted_vms(args)
    prepare_host()
    key = ssh_key()
    booted: list[Vm] = []
    with locked() as state:
        base_s = ensure_base(key.with_suffix(".pub").read_text().strip())
        mirrors = mirror_addresses()
        ensure_network(sorted({ip for ips in mirrors.values() for ip in ips}))
        ensure_apt_proxy()
        extra = [vm for vm in state.cluster(args.cluster) if vm.name not in wanted]
        if extra:
            progress(f"{args.cluster}: removing VMs no longer asked for")
            destroy_vms(extra)
            for vm in extra:
                del state.vms[vm.name]
        vms = [claim(state, name, args.cluster, groups) for name, groups in wanted.items()]
        for vm in vms:
            if nspawn_alive(vm):
                progress(f"{vm.name}: already up at {vm.address}")
                continue
            halt_vm(vm)  # a crashed VM: clear what it left, keep its disk
            prepare_vm(vm, mirrors)
            booted.append(vm)
        make_host_keys(booted)
        for vm in booted:
            progress(f"{vm.name}: booting at {vm.address} ({','.join(vm.groups) or 'no group'})")
            boot_vm(vm)
    wait_ready(vms, key)
    path = inventory_path(args)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_inventory(vms, key))
        progress(f"wrote {path}")
    facts = {"booted": [vm.name for vm in booted], "base_build_s": round(base_s, 1)}
    report(vms, args.json, extra=facts)
    return 0


def cmd_host(args: argparse.Namespace) -> int:
    prepare_host()
    print("host ready: every host package installed, kernel features present")
    return 0


def selected(state: State, args: argparse.Namespace) -> list[Vm]:
    return list(state.vms.values()) if args.all else state.cluster(args.cluster)


def cmd_status(args: argparse.Namespace) -> int:
    require_root("status", "it asks each VM's systemd through nsenter")
    report(selected(State.load(), args), args.json)
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    prepare_host()
    key = ssh_key()
    with locked() as state:
        vm = state.vms.get(args.name)
        if vm is None or vm.cluster != args.cluster:
            raise SandboxError(f"no VM {args.name} in cluster {args.cluster}: see `status --all`")
        progress(f"{vm.name}: halting")
        halt_vm(vm)
        progress(f"{vm.name}: booting again on the same disk")
        prepare_vm(vm, mirror_addresses())
        make_host_keys([vm])
        boot_vm(vm)
    wait_ready([vm], key)
    report([vm], args.json)
    return 0


def teardown_shared(purge: bool) -> None:
    """With no VM left: the bridge, the iptables rules, the apt proxy, the cgroup parents."""
    progress("no VM left: removing bridge, iptables rules and apt proxy")
    stop_apt_proxy()
    remove_network()
    for hierarchy in CGROUP_HIERARCHIES:
        remove_cgroup(Path(f"/sys/fs/cgroup/{hierarchy}/{RULE_TAG}"))
    for root in STATE_DIR.glob("vms/*/root"):  # a VM the state lost track of
        if os.path.ismount(root):
            run(["umount", "-l", str(root)], check=False)
    shutil.rmtree(STATE_DIR / "vms", ignore_errors=True)
    if purge:
        progress(f"purging the base image, the package cache and the SSH key from {STATE_DIR}")
        for name in ("base", "base.tmp", "acng", "ssh", "vms"):
            shutil.rmtree(STATE_DIR / name, ignore_errors=True)
        for name in ("base.recipe", "ip_forward.saved"):
            (STATE_DIR / name).unlink(missing_ok=True)


def cmd_down(args: argparse.Namespace) -> int:
    require_root("down")
    removed: list[str] = []
    with locked() as state:
        vms = selected(state, args)
        progress(f"stopping {', '.join(vm.name for vm in vms) or 'no VM'}")
    request_halt(vms)  # without the lock: a big VM may take seconds to halt
    with locked() as state:
        vms = [state.vms[vm.name] for vm in vms if vm.name in state.vms]
        destroy_vms(vms)
        for vm in vms:
            del state.vms[vm.name]
            removed.append(vm.name)
        left = len(state.vms)
        if not left:
            teardown_shared(args.purge)
        elif args.purge:
            progress(f"{left} VM(s) of other clusters still up: nothing purged")
    if (args.all or args.cluster == DEFAULT_CLUSTER) and DEFAULT_INVENTORY.exists():
        DEFAULT_INVENTORY.unlink()
    if args.json:
        print(json.dumps({"removed": removed, "vms_left": left}, indent=2))
    else:
        print(f"removed {len(removed)} VM(s): {', '.join(removed) or '-'}; {left} left")
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    vm = State.load().vms.get(args.name)
    if vm is None:
        raise SandboxError(f"no VM named {args.name}: see `python3 -m tools.sandbox status --all`")
    argv = ssh_argv(vm, STATE_DIR / "ssh" / "id_ed25519")
    os.execvp("ssh", [*argv, *args.command])
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m tools.sandbox",
        description="Local Debian 12 VMs (systemd-nspawn) in named clusters.",
        epilog=(USAGE or "").split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, allow_all: bool = True) -> None:
        sp.add_argument("--cluster", default=DEFAULT_CLUSTER, help="cluster name (default sandbox)")
        if allow_all:
            sp.add_argument("--all", action="store_true", help="every cluster")
        sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    up = sub.add_parser("up", help="create or start a cluster's VMs (idempotent)")
    common(up, allow_all=False)
    up.add_argument("--topology", choices=sorted(TOPOLOGIES), default="allinone")
    up.add_argument("--vm", action="append", metavar="NAME:GROUPS", help="instead of --topology")
    up.add_argument("--inventory", help="inventory to write ('-': none; default: the sandbox's)")
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", help="list VMs and their state")
    common(st)
    st.set_defaults(func=cmd_status)
    rs = sub.add_parser("restart", help="halt a VM and boot it again on the same disk")
    common(rs, allow_all=False)
    rs.add_argument("name")
    rs.set_defaults(func=cmd_restart)
    dn = sub.add_parser("down", help="stop and remove VMs, leaving nothing behind")
    common(dn)
    dn.add_argument("--purge", action="store_true", help="also remove the base image and caches")
    dn.set_defaults(func=cmd_down)
    sh = sub.add_parser("ssh", help="SSH into a VM as root")
    sh.add_argument("name")
    sh.add_argument("command", nargs=argparse.REMAINDER)
    sh.set_defaults(func=cmd_ssh)
    hp = sub.add_parser("host", help="install the missing host packages, check the kernel")
    hp.set_defaults(func=cmd_host)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sbin_on_path()
    try:
        if hasattr(args, "cluster"):
            check_name("cluster", args.cluster)
        return int(args.func(args))
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
