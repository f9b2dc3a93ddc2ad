#!/usr/bin/python
"""Build the app's release bundle on the controller, safe when several runs share a checkout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: app_bundle
short_description: Build a uv workspace member into a release bundle (wheel, pins, wheelhouse)
description:
  - Builds the wheel of O(package) with C(uv build) and exports the pins of C(uv.lock) with
    C(uv export --frozen --no-dev --no-emit-workspace --no-hashes), then derives the release id,
    the version, a dash, and the first 12 hex digits of the sha256 of the wheel's sha256
    followed by the requirements' sha256, as in C(0.1.0-a3147dfd6461).
  - Downloads a wheelhouse of the pins (environment markers stripped, so every pin is fetched
    whatever the controller's Python) for O(python_version) and O(platforms) with
    C(pip download --no-deps --only-binary=:all:), and packs wheelhouse, wheel and
    C(requirements.txt) into one tar, C(<build_dir>/bundles/<release id>.tar).
  - Safe when two runs share O(build_dir) (two operators, parallel CI scenarios). Every run works
    in its own temporary directory under C(<build_dir>/tmp/) and publishes each result into a
    content-addressed cache with one C(rename), so a reader sees a complete result or none.
    C(releases/<release id>/) holds the wheel and requirements, C(wheelhouse/<key>/) the
    downloaded wheels (key from the pins, the Python version and the platforms; a C(.complete)
    marker inside, written before the rename), C(bundles/<release id>.tar) the bundle. A result
    already in the cache is reused, so an unchanged app downloads and packs nothing.
  - An unchanged app is not even built. C(sources/<key>.json) names the release that the
    member's files and the workspace's C(pyproject.toml) and C(uv.lock) were last built into
    (the key is their sha256); while that release, its wheelhouse and its bundle are in the
    cache, the module returns them without running C(uv). Caches and build output in the
    member's directory (C(__pycache__), C(.venv), C(dist), ...) are not part of the key.
  - Runs where it is called; use it with C(delegate_to) V(localhost) and C(run_once).
version_added: "0.1.0"
author: slipway
options:
  project_dir:
    description: The uv workspace (the directory of C(uv.lock)).
    type: path
    required: true
  package:
    description: The workspace member to build.
    type: str
    required: true
  build_dir:
    description: Cache directory; created if missing.
    type: path
    required: true
  pip:
    description: Command that runs pip (uv has no C(pip download)).
    type: list
    elements: str
    default: [uv, tool, run, pip]
  python_version:
    description: Python version of the hosts, as C(3.11).
    type: str
    default: "3.11"
  platforms:
    description: Platform tags the hosts accept, best first (C(manylinux_2_36_x86_64), ...).
    type: list
    elements: str
    required: true
  tmp_max_age:
    description: Seconds after which a temporary directory that a killed run left is removed.
    type: int
    default: 86400
notes:
  - Supports check mode. In check mode the wheel and the pins are built in a temporary
    directory to learn the release id (unless the sources' key already names a cached
    release), and nothing is added to the cache.
"""

EXAMPLES = r"""
- name: Build the release bundle
  app_bundle:
    project_dir: "{{ playbook_dir }}"
    package: slipway-app
    build_dir: "{{ playbook_dir }}/.cache/app-build"
    platforms: [manylinux_2_36_x86_64, manylinux2014_x86_64, linux_x86_64]
  delegate_to: localhost
  run_once: true
  register: __bundle
"""

RETURN = r"""
release_id:
  description: C(<version>-<12 hex digits>) of the wheel and the pins.
  returned: always
  type: str
  sample: 0.1.0-a3147dfd6461
version:
  description: The package version (the release id without its hash).
  returned: always
  type: str
  sample: 0.1.0
built_at:
  description: When this release was first published into the cache (UTC, ISO 8601).
  returned: always
  type: str
  sample: "2026-12-02T08:15:00Z"
git_revision:
  description: C(git describe --always --dirty) of O(project_dir), or V(unknown) outside git.
  returned: always
  type: str
  sample: a76c9c8e41f0-dirty
wheel_name:
  description: File name of the wheel.
  returned: always
  type: str
  sample: slipway_app-0.1.0-py3-none-any.whl
wheel_file:
  description: The wheel in the cache (in check mode, where it would be).
  returned: always
  type: str
requirements:
  description: The exported pins in the cache (in check mode, where they would be).
  returned: always
  type: str
wheelhouse:
  description: The wheelhouse directory in the cache (in check mode, where it would be).
  returned: always
  type: str
bundle:
  description: The bundle tar in the cache (in check mode, where it would be).
  returned: always
  type: str
added:
  description: What this run added to the cache (or, in check mode, would add).
  returned: always
  type: list
  elements: str
  sample: [release, wheelhouse, bundle]
built:
  description: Whether C(uv) ran; false when the sources' key named a complete cached release.
  returned: always
  type: bool
"""

_MARKER = ".complete"
# Not sources: what tools and builds leave in a member's directory.
_NOT_SOURCES = {".git", ".venv", "venv", "__pycache__", "dist", "build", ".tox", ".nox",
                ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules"}  # fmt: skip


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def release_id(wheel_name: str, wheel_sha256: str, requirements_sha256: str) -> str:
    """<version>-<sha256(wheel sha256 + requirements sha256)[:12]>."""
    version = wheel_name.split("-")[1]
    digest = hashlib.sha256((wheel_sha256 + requirements_sha256).encode()).hexdigest()
    return f"{version}-{digest[:12]}"


def download_list(requirements: str) -> str:
    """Every pin, comments and environment markers removed (markers are evaluated on the host)."""
    lines = (re.sub(r" *;.*$", "", line) for line in requirements.splitlines())
    return "".join(
        f"{line}\n" for line in lines if line.strip() and not line.lstrip().startswith("#")
    )


def wheelhouse_key(pins: str, python_version: str, platforms: list[str]) -> str:
    """What the download depends on: the pins, the Python version and the platform tags."""
    blob = json.dumps({"pins": pins, "python": python_version, "platforms": platforms})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def canonical_name(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def member_dir(project_dir: Path, package: str) -> Path | None:
    """The directory of the uv workspace member named package (the root itself may be it)."""
    root = tomllib.loads((project_dir / "pyproject.toml").read_text())
    patterns = root.get("tool", {}).get("uv", {}).get("workspace", {}).get("members", [])
    candidates = [
        project_dir,
        *(d for pattern in patterns for d in sorted(project_dir.glob(pattern))),
    ]
    for candidate in candidates:
        meta = candidate / "pyproject.toml"
        if meta.is_file():
            name = tomllib.loads(meta.read_text()).get("project", {}).get("name", "")
            if canonical_name(name) == canonical_name(package):
                return candidate
    return None


def sources_key(project_dir: Path, package: str) -> str | None:
    """sha256 of what the wheel and the pins are made from: the member's files (not caches or
    build output) and the workspace's pyproject.toml and uv.lock. None when the member is not
    found, or a file cannot be read: the build then runs, as it would without this key."""
    try:
        member = member_dir(project_dir, package)
        if member is None:
            return None
        files = [project_dir / "pyproject.toml", project_dir / "uv.lock"]
        for top, dirs, names in os.walk(member):
            dirs[:] = sorted(
                d for d in dirs if d not in _NOT_SOURCES and not d.endswith(".egg-info")
            )
            files.extend(Path(top) / n for n in sorted(names) if not n.endswith((".pyc", ".pyo")))
        digest = hashlib.sha256(canonical_name(package).encode() + b"\0")
        for path in dict.fromkeys(files):  # the root is a member too: each file once
            digest.update(os.fsencode(path.relative_to(project_dir)) + b"\0")
            digest.update(sha256_file(path).encode() + b"\0")
        return digest.hexdigest()
    except (OSError, ValueError, tomllib.TOMLDecodeError):
        return None


def publish(src: Path, dest: Path) -> bool:
    """Move the directory src to dest with one rename; False when another run got there first
    (dest then stays as that run left it: complete, since it too arrived by rename)."""
    try:
        src.rename(dest)
    except OSError:
        if not dest.is_dir():
            raise
        return False
    return True


def pack(bundle: Path, wheelhouse: Path, release: Path, wheel_name: str) -> None:
    """Write the bundle tar: the wheelhouse's wheels, the app's wheel, requirements.txt."""

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = 0o644
        return info

    with tarfile.open(bundle, "w") as tar:
        for wheel in sorted(wheelhouse.iterdir()):
            if wheel.name != _MARKER:
                tar.add(wheel, arcname=wheel.name, filter=owned_by_root)
        tar.add(release / wheel_name, arcname=wheel_name, filter=owned_by_root)
        tar.add(release / "requirements.txt", arcname="requirements.txt", filter=owned_by_root)


class Builder:
    """One run: a private work directory under <build_dir>/tmp/, results published by rename."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.cache = Path(self.params["build_dir"])

    def run(self, argv: list[str], what: str) -> str:
        started = time.monotonic()
        rc, out, err = self.module.run_command(argv, cwd=self.params["project_dir"])
        if rc != 0:
            self.module.fail_json(
                msg=(
                    f"{what} failed in {self.params['project_dir']} with exit code {rc} after "
                    f"{time.monotonic() - started:.1f} s: {(err or out).strip()[-2000:]}"
                ),
                cmd=argv,
                rc=rc,
            )
        return str(out)

    def git_revision(self) -> str:
        """The checkout's commit (with -dirty when it has local changes), else "unknown"."""
        git = self.module.get_bin_path("git")
        if git is None:
            return "unknown"
        argv = [git, "-C", self.params["project_dir"], "describe", "--always", "--dirty",
                "--abbrev=12", "--exclude=*"]  # fmt: skip
        rc, out, _ = self.module.run_command(argv)
        return str(out).strip() if rc == 0 and out.strip() else "unknown"

    def remove_stale_work_dirs(self, tmp_root: Path) -> None:
        """Work directories of runs that were killed: older than tmp_max_age."""
        cutoff = time.time() - self.params["tmp_max_age"]
        for entry in tmp_root.iterdir():
            try:
                if entry.lstat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
            except FileNotFoundError:
                pass  # another run removed it

    def build(self, work: Path) -> dict[str, Any]:
        p = self.params
        check = self.module.check_mode
        uv = self.module.get_bin_path("uv")
        if uv is None:
            self.module.fail_json(
                msg="uv is not on the controller's PATH: run from the project's venv "
                "(make venv; PATH=.venv/bin:$PATH) or install uv."
            )
        self.run(
            [uv, "build", "--quiet", "--package", p["package"], "--wheel", "--out-dir", str(work)],
            "uv build",
        )
        # Pins on stdout: with --output-file, uv writes the file's path into its header, and
        # the pins (hence the release id) would depend on where the work directory is.
        pins = self.run(
            [uv, "export", "--package", p["package"], "--no-dev", "--frozen",
             "--no-emit-workspace", "--no-hashes", "--quiet"],
            "uv export",
        )  # fmt: skip
        wheels = sorted(work.glob("*.whl"))
        if len(wheels) != 1:
            self.module.fail_json(msg=f"uv build made {len(wheels)} wheels in {work}, not one.")
        wheel = wheels[0]
        (work / "requirements.txt").write_text(pins)
        rid = release_id(wheel.name, sha256_file(wheel), sha256_file(work / "requirements.txt"))
        download = download_list(pins)
        key = wheelhouse_key(download, p["python_version"], p["platforms"])

        release = self.cache / "releases" / rid
        wheelhouse = self.cache / "wheelhouse" / key
        bundle = self.cache / "bundles" / f"{rid}.tar"
        added: list[str] = []

        if not release.is_dir():
            added.append("release")
            if not check:
                staged = work / "release"
                staged.mkdir()
                wheel.rename(staged / wheel.name)
                (work / "requirements.txt").rename(staged / "requirements.txt")
                publish(staged, release)

        if not (wheelhouse / _MARKER).is_file():
            added.append("wheelhouse")
            if not check:
                staged = work / "wheelhouse"
                staged.mkdir()
                (work / "download.txt").write_text(download)
                self.run(
                    [*p["pip"], "download", "--quiet", "--disable-pip-version-check",
                     "--no-deps", "--only-binary=:all:", "--implementation", "cp",
                     "--python-version", p["python_version"],
                     "-r", str(work / "download.txt"), "-d", str(staged),
                     *(f"--platform={tag}" for tag in p["platforms"])],
                    "pip download of the wheelhouse",
                )  # fmt: skip
                (staged / _MARKER).write_text(download)
                publish(staged, wheelhouse)
                if not (wheelhouse / _MARKER).is_file():
                    self.module.fail_json(
                        msg=f"{wheelhouse} has no {_MARKER} marker: it was not written by this "
                        "module (which publishes it whole). Remove it and run again."
                    )

        if not bundle.is_file():
            added.append("bundle")
            if not check:
                staged_tar = work / "bundle.tar"
                pack(staged_tar, wheelhouse, release, wheel.name)
                staged_tar.chmod(0o644)
                os.replace(staged_tar, bundle)

        return self.result(rid, wheel.name, wheelhouse, added=added, built=True)

    def result(
        self, rid: str, wheel_name: str, wheelhouse: Path, added: list[str], built: bool
    ) -> dict[str, Any]:
        release = self.cache / "releases" / rid
        # When the release was first published into the cache (now, in check mode).
        first = release.stat().st_mtime if release.is_dir() else time.time()
        return {
            "changed": bool(added),
            "added": added,
            "built": built,
            "release_id": rid,
            "version": rid.rsplit("-", 1)[0],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first)),
            "git_revision": self.git_revision(),
            "wheel_name": wheel_name,
            "wheel_file": str(release / wheel_name),
            "requirements": str(release / "requirements.txt"),
            "wheelhouse": str(wheelhouse),
            "bundle": str(self.cache / "bundles" / f"{rid}.tar"),
        }

    def cached(self, key: str) -> dict[str, Any] | None:
        """The result for the release that sources/<key>.json names, when that release, its
        wheelhouse and its bundle are all in the cache; else None (then the build runs)."""
        p = self.params
        try:
            entry = json.loads((self.cache / "sources" / f"{key}.json").read_text())
            rid, wheel_name = str(entry["release_id"]), str(entry["wheel_name"])
            release = self.cache / "releases" / rid
            pins = (release / "requirements.txt").read_text()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        house = wheelhouse_key(download_list(pins), p["python_version"], p["platforms"])
        wheelhouse = self.cache / "wheelhouse" / house
        complete = (
            (release / wheel_name).is_file()
            and (wheelhouse / _MARKER).is_file()
            and (self.cache / "bundles" / f"{rid}.tar").is_file()
        )
        return self.result(rid, wheel_name, wheelhouse, added=[], built=False) if complete else None

    def remember(self, key: str, result: dict[str, Any]) -> None:
        """Record that the sources of key build into result's release (one rename)."""
        sources = self.cache / "sources"
        entry = {"release_id": result["release_id"], "wheel_name": result["wheel_name"]}
        handle, staged = tempfile.mkstemp(prefix=f".{key}.", dir=sources)
        with os.fdopen(handle, "w") as out:
            json.dump(entry, out)
        os.chmod(staged, 0o644)
        os.replace(staged, sources / f"{key}.json")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "project_dir": {"type": "path", "required": True},
            "package": {"type": "str", "required": True},
            "build_dir": {"type": "path", "required": True},
            "pip": {"type": "list", "elements": "str", "default": ["uv", "tool", "run", "pip"]},
            "python_version": {"type": "str", "default": "3.11"},
            "platforms": {"type": "list", "elements": "str", "required": True},
            "tmp_max_age": {"type": "int", "default": 86400},
        },
        supports_check_mode=True,
    )
    builder = Builder(module)
    project_dir, package = Path(module.params["project_dir"]), module.params["package"]
    key = sources_key(project_dir, package)
    cached = builder.cached(key) if key else None
    if cached is not None:
        module.exit_json(**cached)
    if module.check_mode:
        # The wheel and the pins are needed for the release id; the cache is left alone.
        work = Path(tempfile.mkdtemp(prefix="app-bundle-check-"))
    else:
        tmp_root = builder.cache / "tmp"
        for sub in ("tmp", "releases", "wheelhouse", "bundles", "sources"):
            (builder.cache / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
        builder.remove_stale_work_dirs(tmp_root)
        work = Path(tempfile.mkdtemp(prefix="run-", dir=tmp_root))
    try:
        result = builder.build(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Only when the sources did not change while uv built them.
    if key and not module.check_mode and sources_key(project_dir, package) == key:
        builder.remember(key, result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
