"""VM lifecycle: an overlay over the base, systemd-nspawn booted in cgroups of its own,
readiness (systemd `running` and SSH), a clean halt, and removal without traces."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import time
from pathlib import Path

from tools.sandbox import host
from tools.sandbox.state import BRIDGE, HOST_ADDRESS, NETWORK, STATE_DIR, Vm

BOOT_TIMEOUT_S = 60.0
SSH_TIMEOUT_S = 60.0  # sshd may start late when the machine is loaded by other VMs
STOP_TIMEOUT_S = 10.0


def nspawn_alive(vm: Vm) -> bool:
    """The VM's nspawn process runs (not a zombie, and not a PID reused by something else)."""
    return bool(vm.pid) and host.process_alive(vm.pid, f"--machine={vm.name}")


def cgroup_pids(path: Path) -> list[int]:
    pids: list[int] = []
    if path.is_dir():
        for procs in path.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids += [int(p) for p in procs.read_text().split()]
    return pids


def kill_cgroup(path: Path) -> None:
    """SIGKILL whatever is left in a VM's cgroup, and wait (bounded) until it is gone."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (pids := [p for p in cgroup_pids(path) if host.process_alive(p)]) and (
        time.monotonic() < deadline
    ):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def remove_cgroup(path: Path) -> None:
    """Remove a cgroup directory and the ones the VM's systemd made inside it."""
    if not path.is_dir():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


# --- VMs -------------------------------------------------------------------------------


def vm_leader(vm: Vm) -> int:
    """PID of the VM's systemd (the nspawn process's child), 0 when there is none."""
    if not nspawn_alive(vm):
        return 0
    with contextlib.suppress(OSError, ValueError):
        for task in Path(f"/proc/{vm.pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
    return 0


def in_vm(vm: Vm, command: list[str], timeout: float = 10) -> str:
    """A command's stdout, run in the VM's namespaces through its systemd ('' if not up)."""
    leader = vm_leader(vm)
    if not leader:
        return ""
    argv = ["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", *command]
    with contextlib.suppress(host.SandboxError):
        return host.run(argv, check=False, timeout=timeout).stdout.strip()
    return ""


def vm_state(vm: Vm) -> str:
    """`running`, `degraded`, `starting`, ... as the VM's systemd says, or `down`."""
    if not nspawn_alive(vm):
        return "down"
    return in_vm(vm, ["systemctl", "is-system-running"]) or "starting"


def prepare_vm(vm: Vm, mirrors: dict[str, list[str]]) -> None:
    """Mount the VM's overlay and write its identity (host keys on first boot only)."""
    for sub in ("upper", "work", "root"):
        (vm.dir / sub).mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(vm.root):
        layers = f"lowerdir={STATE_DIR / 'base'},upperdir={vm.dir}/upper,workdir={vm.dir}/work"
        host.run(["mount", "-t", "overlay", "overlay", "-o", layers, str(vm.root)])
    (vm.root / "etc" / "hostname").write_text(f"{vm.name}\n")
    network = vm.root / "etc" / "systemd" / "network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "10-host0.network").write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={vm.address}/{NETWORK.prefixlen}\n"
        f"Gateway={HOST_ADDRESS}\n"
    )
    (vm.root / "etc" / "hosts").write_text(render_hosts(vm.name, mirrors))


def make_host_keys(vms: list[Vm]) -> None:
    """SSH host keys of its own for each VM booting for the first time.

    The base has none (clones would share them). Ed25519 and ECDSA take
    milliseconds; RSA 3072 takes ~0.7 s of CPU per VM and is left out: sshd
    quietly skips a default host key that does not exist.
    """
    for vm in vms:
        for kind in ("ed25519", "ecdsa"):
            path = vm.root / "etc" / "ssh" / f"ssh_host_{kind}_key"
            if not path.exists():
                host.run(
                    [
                        "ssh-keygen",
                        "-q",
                        "-t",
                        kind,
                        "-N",
                        "",
                        "-C",
                        f"root@{vm.name}",
                        "-f",
                        str(path),
                    ]
                )


def render_hosts(name: str, mirrors: dict[str, list[str]]) -> str:
    """/etc/hosts for a VM: there is no DNS inside, so the mirrors are named here."""
    lines = ["127.0.0.1 localhost", f"127.0.1.1 {name}", "::1 localhost ip6-localhost"]
    lines += [f"{ips[0]} {mirror}" for mirror, ips in sorted(mirrors.items()) if ips]
    return "\n".join(lines) + "\n"


def boot_vm(vm: Vm) -> None:
    """Start the VM's nspawn in a session and cgroups of its own (it outlives this process)."""
    for d in vm.cgroups:
        d.mkdir(parents=True, exist_ok=True)

    def enter_cgroups() -> None:  # in the child, before exec
        for d in vm.cgroups:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    argv = ["systemd-nspawn", "-q", "-D", str(vm.root), "--boot", f"--machine={vm.name}"]
    argv += ["--register=no", "--keep-unit", f"--network-bridge={BRIDGE}", "--console=passive"]
    # preexec_fn is safe here: this process has no other threads.
    vm.pid = host.spawn(argv, vm.dir / "console.log", preexec_fn=enter_cgroups).pid


def boot_problem(vm: Vm) -> str | None:
    """None while the VM is still booting, '' once running, else what went wrong."""
    if not nspawn_alive(vm):
        tail = (vm.dir / "console.log").read_text(errors="replace").strip()[-400:]
        return f"{vm.name} exited during boot: {tail}"
    state = vm_state(vm)
    if state == "running":
        return ""
    if state == "degraded":
        failed = in_vm(vm, ["systemctl", "--failed", "--no-legend", "--plain"]).splitlines()
        units = ", ".join(line.split()[0] for line in failed if line.split()) or "?"
        return f"{vm.name} booted degraded (failed units: {units})"
    return None


def wait_ready(vms: list[Vm], key: Path) -> None:
    """Wait (bounded) until every VM's systemd says `running` and SSH answers."""
    problems: list[str] = []
    pending = list(vms)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        for vm in list(pending):
            problem = boot_problem(vm)
            if problem is None:
                continue
            pending.remove(vm)
            if problem:
                problems.append(problem)
                continue
            try:
                host.wait_for(
                    functools.partial(ssh_ok, vm, key), SSH_TIMEOUT_S, f"SSH on {vm.name}"
                )
                host.progress(f"{vm.name}: running, SSH up")
            except host.SandboxError as exc:
                problems.append(str(exc))
        time.sleep(0.2 if pending else 0)
    problems += [
        f"{vm.name} did not finish booting in {BOOT_TIMEOUT_S:.0f} s ({vm_state(vm)})"
        for vm in pending
    ]
    if problems:
        raise host.SandboxError("; ".join(problems) + ": see `status`, `ssh` or console.log")


def halt_vm(vm: Vm) -> None:
    """Stop the VM (a clean halt on SIGTERM) and unmount its overlay; its disk stays.

    A VM whose nspawn process died (crashed, or killed) leaves its systemd and
    services running orphaned: they are all in the VM's cgroup, so they are
    killed from there (which also takes its network namespace and veth away).
    """
    if nspawn_alive(vm):
        host.stop_process(vm.pid, STOP_TIMEOUT_S)
    vm.pid = 0
    kill_cgroup(vm.cgroups[0])
    veth = f"vb-{vm.name}"
    if len(veth) <= 15 and Path(f"/sys/class/net/{veth}").exists():
        host.run(["ip", "link", "del", veth], check=False)
    if os.path.ismount(vm.root) and host.run(["umount", str(vm.root)], check=False).returncode != 0:
        host.run(["umount", "-l", str(vm.root)], check=False)
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{vm.name}", ignore_errors=True)
    for d in vm.cgroups:
        remove_cgroup(d)


def request_halt(vms: list[Vm]) -> None:
    """SIGTERM to every VM at once (a clean halt), and wait (bounded) until they stopped."""
    running = [vm for vm in vms if nspawn_alive(vm)]
    for vm in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(vm.pid, signal.SIGTERM)
    with contextlib.suppress(host.SandboxError):
        host.wait_for(lambda: not any(map(nspawn_alive, running)), STOP_TIMEOUT_S, "VMs to halt")


def destroy_vms(vms: list[Vm]) -> None:
    """Halt VMs (in parallel) and remove everything of theirs, disks included."""
    request_halt(vms)
    for vm in vms:
        host.progress(f"{vm.name}: halted; removing")
        halt_vm(vm)  # SIGKILL for any that did not halt; cgroups, overlay
        shutil.rmtree(vm.dir, ignore_errors=True)


def ssh_argv(vm: Vm, key: Path) -> list[str]:
    options = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "ConnectTimeout=2"]
    options += ["BatchMode=yes", "LogLevel=ERROR"]
    return ["ssh", "-i", str(key), *(f"-o{o}" for o in options), f"root@{vm.address}"]


def ssh_ok(vm: Vm, key: Path) -> bool:
    return host.run([*ssh_argv(vm, key), "true"], check=False, timeout=10).returncode == 0
