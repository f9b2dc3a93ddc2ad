"""roles/redis/files/slipway-redis-check, the redis role's `validate` command: a throw-away
redis-server reads the file and the check answers as soon as that server is ready or has
refused it, with Redis' own message."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

CHECK = REPO / "roles" / "redis" / "files" / "slipway-redis-check"

pytestmark = pytest.mark.services


@pytest.fixture(scope="module", autouse=True)
def redis_server() -> None:
    """redis-server on this machine: tools/test-services.sh installs it where it is absent."""
    if shutil.which("redis-server") is None:
        subprocess.run([str(REPO / "tools" / "test-services.sh"), "start"], check=True, timeout=300)


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(CHECK), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_accepts_a_good_config_and_leaves_no_server(tmp_path: Path) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text("maxmemory 64mb\nmaxmemory-policy noeviction\n")
    result = check(str(conf))
    assert result.returncode == 0, result.stderr
    # The throw-away server is stopped, not left to run out a timeout.
    ps = subprocess.run(["pgrep", "-f", f"redis-server {conf}"], capture_output=True, check=False)
    assert ps.returncode == 1, ps.stdout


def test_refuses_a_bad_directive_with_redis_message(tmp_path: Path) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text("maxmemory 64mb\nno-such-directive yes\n")
    result = check(str(conf))
    assert result.returncode == 1
    assert "no-such-directive" in result.stderr and "Bad directive" in result.stderr


def test_checks_an_acl_file(tmp_path: Path) -> None:
    good = tmp_path / "good.acl"
    good.write_text("user default off\nuser app on >a-long-password ~* +@all\n")
    bad = tmp_path / "bad.acl"
    bad.write_text("user app on >a-long-password ~* +@no-such-category\n")
    assert check("--aclfile", str(good)).returncode == 0
    refused = check("--aclfile", str(bad))
    assert refused.returncode == 1
    assert "+@no-such-category" in refused.stderr
