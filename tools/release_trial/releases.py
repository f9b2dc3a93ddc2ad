"""The trial's releases: a copy of the repository's files with one line appended (a new
release id), or with a readiness that fails; and the extra vars that deploy a copy."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from .config import TrialError

MARKED_FILE = "app/src/slipway_app/__init__.py"
READINESS_FILE = "app/src/slipway_app/core/readiness.py"
# Appended to readiness.py of the bad release: health.py imports `readiness` once the module
# has run, so this redefinition is the one it calls.
BAD_READINESS = """

# trial release built to fail readiness (tools/release_trial)
_trial_original_readiness = readiness


async def readiness(*args, **kwargs):  # type: ignore[no-untyped-def]  # noqa: F811
    checks = await _trial_original_readiness(*args, **kwargs)
    checks["trial"] = CheckResult("fail", error="trial release built to fail readiness")
    return checks
"""


# Added to the migrating release: an expand-only migration (a nullable column), which the
# release before it keeps working with.
MIGRATION_FILE = "app/src/slipway_app/migrations/versions/0002_trial_expand.py"
MIGRATION = '''"""Trial: an expand-only migration (a nullable column on jobs).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("trial_note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "trial_note")
'''


def release_files(project: Path) -> list[str]:
    """The repository's files: tracked, and untracked ones git does not ignore."""
    argv = ["git", "-C", str(project), "ls-files", "-co", "--exclude-standard", "-z"]
    proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise TrialError(f"`{shlex.join(argv)}` failed: {proc.stderr.decode().strip()[-300:]}")
    return sorted({name for name in proc.stdout.decode().split("\0") if name})


def make_release(
    project: Path, out: Path, name: str, marker: str, bad: bool = False, migration: bool = False
) -> Path:
    """Copy the repository's files to OUT/src-NAME, append `# trial release MARKER` to the
    app's __init__.py (a new wheel: a new release id); `bad` also makes readiness fail,
    `migration` adds the expand-only revision 0002."""
    dest = out / f"src-{name}"
    if dest.exists():
        shutil.rmtree(dest)
    skip = out.resolve()
    for rel in release_files(project):
        src = project / rel
        if skip in src.resolve().parents or not (src.is_file() or src.is_symlink()):
            continue  # the trial's own output, a deleted file, a submodule
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)
    with (dest / MARKED_FILE).open("a", encoding="utf-8") as handle:
        handle.write(f"# trial release {marker}\n")
    if bad:
        with (dest / READINESS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(BAD_READINESS)
    if migration:
        (dest / MIGRATION_FILE).write_text(MIGRATION, encoding="utf-8")
    return dest


def release_vars(copy: Path, project: Path) -> dict[str, str]:
    """Extra vars that deploy the copy, with the repository's wheel cache (no download)."""
    return {"app_project_dir": str(copy), "app_build_dir": str(project / ".cache" / "app-build")}
