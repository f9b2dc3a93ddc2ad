"""A host's releases of the app: metadata, the ``current`` link, the deploy log, pruning.

Layout under ``root`` (``/opt/slipway`` by default)::

    releases/<id>/venv/          installed by the playbook
    releases/<id>/.installed     written last by the install: without it a release is not installed
    releases/<id>/release.json   metadata (state, who deployed it and when), written here
    current -> releases/<id>     absolute symlink, replaced atomically
    deploy.log                   one JSON object per line, appended here

Every file is written atomically (a temporary file in the same directory, fsync, rename), so the
app, which reads ``release.json``'s ``id`` at start, never sees half a file. Standard library
only: the managed hosts have Debian's python3. Modules import it as
``from ansible.module_utils.slipway_release import ...``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

STATES = ("prepared", "active", "previous", "failed", "rolled-back")
# Keys this code owns; a caller's metadata may not set them.
OWN_KEYS = (
    "id",
    "state",
    "prepared_at",
    "deployed_by",
    "deployed_at",
    "state_changed_at",
    "reason",
)
# Metadata keys whose difference alone does not make a release "changed".
_NOT_COMPARED = (*OWN_KEYS, "built_at")
LOCK_TIMEOUT = 60.0


class ReleaseError(Exception):
    """Something an operator must fix; the message is a sentence that says what and where."""


def now() -> str:
    """UTC time as ISO 8601 with a Z, to the second: 2026-12-02T07:40:33Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def check_id(release: str) -> str:
    """The release id, refused when it could name something outside releases/."""
    if not release or release in (".", "..") or "/" in release or release.startswith("."):
        raise ReleaseError(
            f"{release!r} is not a release id: it must be a plain directory name under releases/."
        )
    return release


def releases_dir(root: str) -> str:
    return os.path.join(root, "releases")


def release_dir(root: str, release: str) -> str:
    return os.path.join(releases_dir(root), check_id(release))


def is_installed(root: str, release: str) -> bool:
    return os.path.isfile(os.path.join(release_dir(root, release), ".installed"))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def read_metadata(root: str, release: str) -> dict[str, Any] | None:
    """The release's release.json, or None when it has none."""
    path = os.path.join(release_dir(root, release), "release.json")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"Cannot read {path}: {exc}. Fix or remove the file.") from exc
    if not isinstance(data, dict):
        raise ReleaseError(f"{path} holds no JSON object. Fix or remove the file.")
    return data


def write_metadata(root: str, release: str, meta: dict[str, Any]) -> None:
    path = os.path.join(release_dir(root, release), "release.json")
    atomic_write(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def new_metadata(release: str, given: dict[str, Any], stamp: str) -> dict[str, Any]:
    """Metadata of a release prepared for the first time."""
    meta = {key: value for key, value in given.items() if key not in OWN_KEYS}
    meta.update(
        id=release,
        state="prepared",
        prepared_at=stamp,
        state_changed_at=stamp,
        deployed_by=None,
        deployed_at=None,
        reason=None,
    )
    return meta


def metadata_updates(old: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``given`` to write into ``old``: those that differ, except our own keys and
    built_at, which a release keeps from the first time it was prepared (added when missing)."""
    updates = {
        key: value
        for key, value in given.items()
        if key not in _NOT_COMPARED and old.get(key) != value
    }
    if "built_at" in given and "built_at" not in old:
        updates["built_at"] = given["built_at"]
    return updates


def current_release(root: str) -> str | None:
    """The id that ``<root>/current`` points at, or None when there is no link."""
    link = os.path.join(root, "current")
    if not os.path.islink(link):
        return None
    target = os.readlink(link)
    return os.path.basename(os.path.normpath(target)) or None


def switch_current(root: str, release: str) -> None:
    """Point ``<root>/current`` at the release: a new link under a temporary name in ``root``,
    renamed over the old one, so ``current`` exists at every moment."""
    target = os.path.abspath(release_dir(root, release))
    for _ in range(10):
        tmp = os.path.join(root, f".current.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            os.symlink(target, tmp)
            break
        except FileExistsError:
            continue
    else:
        raise ReleaseError(f"Cannot create a temporary link in {root} after 10 attempts.")
    try:
        os.replace(tmp, os.path.join(root, "current"))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(root)


def list_releases(root: str) -> list[dict[str, Any]]:
    """Every release directory, newest first (prepared_at, then the directory's mtime). Each is
    its metadata plus ``installed`` and ``current``; one without a readable release.json has
    state unknown (and ``error`` when the file is there but broken)."""
    base = releases_dir(root)
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    current = current_release(root)
    found: list[tuple[float, float, dict[str, Any]]] = []
    for name in names:
        path = os.path.join(base, name)
        if name.startswith(".") or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            meta = read_metadata(root, name) or {"id": name, "state": "unknown"}
        except ReleaseError as exc:  # listed all the same: a rollback must still find its target
            meta = {"id": name, "state": "unknown", "error": str(exc)}
        meta = dict(meta, id=name, installed=is_installed(root, name), current=name == current)
        mtime = os.stat(path).st_mtime
        prepared = _epoch(meta.get("prepared_at"))
        found.append((mtime if prepared is None else prepared, mtime, meta))
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [meta for _, _, meta in found]


def previous_release(releases: list[dict[str, Any]]) -> str | None:
    """The newest release in state previous."""
    return next((r["id"] for r in releases if r.get("state") == "previous"), None)


def rollback_target(releases: list[dict[str, Any]]) -> str | None:
    """Where a rollback goes: the previous release if installed, else the newest installed
    release in state previous or prepared that is not current; None when there is none."""
    candidates = [r for r in releases if r["installed"] and not r["current"]]
    for wanted in (("previous",), ("previous", "prepared")):
        for release in candidates:
            if release.get("state") in wanted:
                return str(release["id"])
    return None


def prune_selection(releases: list[dict[str, Any]], keep: int) -> list[str]:
    """Ids to remove: those beyond the newest ``keep``, never the current release nor the
    rollback target (so a host may keep up to keep + 2)."""
    protected = {r["id"] for r in releases if r["current"]} | {rollback_target(releases)}
    return [r["id"] for r in releases[keep:] if r["id"] not in protected]


def remove_release(root: str, release: str) -> None:
    """Rename the directory out of releases/ first, so a half-removed one is never listed."""
    trash = os.path.join(releases_dir(root), f".removing-{check_id(release)}")
    if os.path.lexists(trash):
        shutil.rmtree(trash)
    os.rename(release_dir(root, release), trash)
    shutil.rmtree(trash)


def leftover_removals(root: str) -> list[str]:
    """Directories a killed prune left under releases/ (renamed, not yet removed)."""
    try:
        names = os.listdir(releases_dir(root))
    except FileNotFoundError:
        return []
    return sorted(os.path.join(releases_dir(root), n) for n in names if n.startswith(".removing-"))


def finish_removal(path: str) -> None:
    """Remove what leftover_removals found."""
    if not os.path.basename(path).startswith(".removing-"):
        raise ReleaseError(f"{path} is not a release being removed; left in place.")
    shutil.rmtree(path)


def append_log(root: str, entry: dict[str, Any]) -> None:
    """Append one JSON line to <root>/deploy.log (0644) with a single O_APPEND write."""
    line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(os.path.join(root, "deploy.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(root: str, lines: int, block: int = 65536) -> list[dict[str, Any]]:
    """The last ``lines`` lines of deploy.log as dicts (a line that is not JSON as {"raw": ...}),
    read from the end, so a long history costs no more than its tail."""
    if lines <= 0:
        return []
    path = os.path.join(root, "deploy.log")
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return []
    with handle:
        end = handle.seek(0, os.SEEK_END)
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= lines:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    tail = [raw for raw in data.decode("utf-8", "replace").splitlines() if raw.strip()][-lines:]
    entries: list[dict[str, Any]] = []
    for raw in tail:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        entries.append(parsed if isinstance(parsed, dict) else {"raw": raw})
    return entries


@contextlib.contextmanager
def locked(root: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold <root>/.release.lock (flock) while releases change, for at most ``timeout`` seconds
    of waiting: two runs on one host never interleave their writes."""
    path = os.path.join(root, ".release.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise ReleaseError(
                        f"Another run holds {path}; gave up after {waited:.0f} s "
                        "(is another deploy running on this host?)."
                    ) from exc
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)
