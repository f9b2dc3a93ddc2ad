"""Host helpers shared by the sandbox and the Pebble helper: commands, processes,
ports, progress lines, root, and the host packages both need (installed when missing)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

STARTED = time.monotonic()
PROC = Path("/proc")
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # iptables, apt-cacher-ng, ... live there
# Every program the sandbox and tools/pebble.py run on the host: command -> Debian package.
HOST_PACKAGES = {
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "iptables": "iptables",
    "apt-cacher-ng": "apt-cacher-ng",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "pebble": "pebble",  # the local ACME CA
    "pebble-challtestsrv": "pebble",
    "openssl": "openssl",  # Pebble's HTTPS certificate
}
# More `command=package` pairs, space-separated, ensured by every install check as well
# (the tests prove the install path with a package that nothing else on the machine uses).
EXTRA_PACKAGES_ENV = "SLIPWAY_SANDBOX_EXTRA_PACKAGES"
INSTALL_TIMEOUT_S = 900.0
APT_LOCK_WAIT_S = 300  # another apt-get on this machine (CI, an operator) holds the lock


class SandboxError(Exception):
    """A failure an operator can act on: the command prints the sentence and exits non-zero."""


def progress(message: str) -> None:
    """One progress line on stderr, with the seconds since this command started."""
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def sbin_on_path() -> None:
    """Put the sbin directories on PATH whatever the caller's PATH (sudo, cron, CI)."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([*path, *(d for d in SBIN if d not in path)])


def run(
    argv: list[str], *, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; with `check`, a failure is a SandboxError."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxError(f"`{' '.join(argv)}` did not finish in {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise SandboxError(f"`{argv[0]}` is not installed on this machine") from exc
    if check and proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        raise SandboxError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {detail}")
    return proc


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it is true; after `timeout` seconds, a SandboxError naming `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SandboxError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def require_root(what: str, why: str = "systemd-nspawn, mounts, iptables") -> None:
    if os.geteuid() != 0:
        raise SandboxError(f"{what} needs root ({why}): run it with sudo")


# --- processes -------------------------------------------------------------------------


def cmdline(pid: int, proc: Path = PROC) -> list[str]:
    with contextlib.suppress(OSError):
        return (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


def process_alive(pid: int, marker: str | None = None, proc: Path = PROC) -> bool:
    """True for a live process (a zombie counts as gone: PID 1 here reaps late) whose
    command line has `marker` as one of its words, when a marker is given (so that a
    PID reused by another program does not count)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        return False
    return marker is None or marker in cmdline(pid, proc)


def spawn(argv: list[str], log: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a daemon in a session of its own (it outlives this command), output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, **popen,
        )  # fmt: skip


def stop_process(pid: int, timeout: float, group: bool = False) -> None:
    """SIGTERM (to the process group with `group`), wait (bounded), then SIGKILL."""
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(pid, signal.SIGTERM)
    with contextlib.suppress(SandboxError):
        wait_for(lambda: not process_alive(pid), timeout, f"pid {pid} to stop")
    if process_alive(pid):
        progress(f"pid {pid} ignored SIGTERM for {timeout:.0f} s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            kill(pid, signal.SIGKILL)
        with contextlib.suppress(SandboxError):
            wait_for(lambda: not process_alive(pid), 2, f"pid {pid} to die")
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def modprobe(module: str) -> None:
    """Load a kernel module if this machine can (it may be built in, or kmod absent)."""
    if shutil.which("modprobe"):
        run(["modprobe", module], check=False)


# --- host packages ---------------------------------------------------------------------


def extra_packages(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The `command=package` pairs of $SLIPWAY_SANDBOX_EXTRA_PACKAGES."""
    extra = {}
    for pair in environ.get(EXTRA_PACKAGES_ENV, "").split():
        command, sep, package = pair.partition("=")
        if not (sep and command and package):
            raise SandboxError(f"{EXTRA_PACKAGES_ENV}: {pair!r} is not COMMAND=PACKAGE")
        extra[command] = package
    return extra


def missing_packages(
    table: Mapping[str, str],
    commands: Iterable[str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """The packages (sorted, once each) whose command is not on PATH; all commands of the
    table, or only `commands`."""
    wanted = table if commands is None else [c for c in commands if c in table]
    return sorted({table[command] for command in wanted if which(command) is None})


def ensure_host_packages(commands: Iterable[str] | None = None) -> list[str]:
    """Install (apt-get) the host package of every missing command, of the whole list or
    of `commands` (and of the extra ones); the packages installed."""
    sbin_on_path()
    extra = extra_packages()
    if commands is not None:
        commands = [*commands, *extra]
    missing = missing_packages({**HOST_PACKAGES, **extra}, commands)
    if missing:
        install_host_packages(missing)
    return missing


def install_host_packages(packages: list[str]) -> None:
    if shutil.which("apt-get") is None:
        raise SandboxError(f"missing host packages {', '.join(packages)} and no apt-get")
    require_root(f"installing {', '.join(packages)}", "apt-get")
    started = time.monotonic()
    progress(f"installing host packages: {', '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # No service of these packages should start on its own (apt-cacher-ng would take the port).
    policy = Path("/usr/sbin/policy-rc.d")
    guard = not policy.exists()
    if guard:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        apt = ["apt-get", "-qq", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"]
        for argv in ([*apt, "update"], [*apt, "install", "-y", *packages]):
            proc = run(argv, check=False, timeout=INSTALL_TIMEOUT_S, env=env)
            if proc.returncode != 0:
                raise SandboxError(
                    f"could not install {', '.join(packages)} ({proc.stderr.strip()[-200:]}): "
                    f"install them with apt-get and try again"
                )
    finally:
        if guard:
            policy.unlink(missing_ok=True)
    progress(f"host packages installed in {time.monotonic() - started:.0f} s")
