"""The read-only Debian 12 base image every VM's overlay lies on (mmdebstrap, rebuilt only
when its recipe changes), and the SSH key baked into it."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from tools.sandbox.host import progress, run
from tools.sandbox.state import APT_PROXY_PORT, HOST_ADDRESS, RULE_TAG, STATE_DIR

BASE_PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,iproute2,ca-certificates"


def ssh_key() -> Path:
    key = STATE_DIR / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", RULE_TAG, "-f", str(key)])
    return key


def base_recipe(pubkey: str) -> list[str]:
    """mmdebstrap's customize hooks; their text is hashed to know when to rebuild."""
    proxy = f'Acquire::http::Proxy "http://{HOST_ADDRESS}:{APT_PROXY_PORT}/";'
    sources = (
        "deb http://deb.debian.org/debian bookworm main\\n"
        "deb http://deb.debian.org/debian bookworm-updates main\\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\\n"
    )
    return [
        'chroot "$1" systemctl enable systemd-networkd ssh',
        f'mkdir -p "$1/root/.ssh" && echo "{pubkey}" > "$1/root/.ssh/authorized_keys"'
        ' && chmod 700 "$1/root/.ssh" && chmod 600 "$1/root/.ssh/authorized_keys"',
        'printf "127.0.0.1 localhost\\n::1 localhost ip6-localhost\\n" > "$1/etc/hosts"',
        ': > "$1/etc/machine-id"',
        f'printf "{sources}" > "$1/etc/apt/sources.list"; rm -f "$1/etc/apt/sources.list.d/"*',
        f"echo '{proxy}' > \"$1/etc/apt/apt.conf.d/01proxy\"",
        "if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then"
        ' cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"'
        ' && chroot "$1" update-ca-certificates >/dev/null; fi',
        'rm -f "$1"/etc/ssh/ssh_host_*',  # every VM makes its own (prepare_vm)
    ]


def mmdebstrap_argv(hooks: list[str], target: Path) -> list[str]:
    argv = ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "--quiet"]
    argv += [f"--customize-hook={hook}" for hook in hooks]
    return [*argv, "bookworm", str(target), "http://deb.debian.org/debian"]


def recipe_digest(hooks: list[str], extra_cas: list[str]) -> str:
    """What the base is built from: the mmdebstrap command and the host's extra CAs."""
    recipe = [*mmdebstrap_argv(hooks, Path("TARGET")), *extra_cas]
    return hashlib.sha256("\n".join(recipe).encode()).hexdigest()


def ensure_base(pubkey: str) -> float:
    """Build the base root filesystem when missing or its recipe changed; seconds spent."""
    hooks = base_recipe(pubkey)
    cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    digest = recipe_digest(hooks, [p.read_text() for p in cas])
    base, stamp = STATE_DIR / "base", STATE_DIR / "base.recipe"
    if base.is_dir() and stamp.exists() and stamp.read_text() == digest:
        return 0.0
    if base.is_dir() and any(STATE_DIR.glob("vms/*/root")):
        progress("base recipe changed, but VMs still run on the old base: keeping it until down")
        return 0.0
    started = time.monotonic()
    progress("building the Debian 12 base image with mmdebstrap (once; ~40 s)")
    tmp = STATE_DIR / "base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    run(mmdebstrap_argv(hooks, tmp), timeout=1200)
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    stamp.write_text(digest)
    spent = time.monotonic() - started
    progress(f"base image ready in {spent:.0f} s")
    return spent
