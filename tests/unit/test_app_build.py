"""Two app builds from one checkout at the same moment (CI's parallel Molecule scenarios, two
operators) both succeed and leave a valid bundle: the app role's build tasks run twice at once
against localhost, into one private build directory. Needs uv on PATH and PyPI for pip.

The two runs are interleaved on purpose, not left to timing. pip runs through PIP_STEP (the
role's `app_build_pip`), which downloads into a scratch directory and then writes into pip's
`-d` directory. The second run writes half of its first wheel there, as a download still in
progress, and holds it until the first run has finished; the first run's pip waits until the
second run is holding. A build that shares its wheelhouse directory with another run packs the
half-written wheel; one that works privately and publishes by rename does not.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import runpy
import shutil
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, AnsibleRunner

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH")

PLAYBOOK = """\
- name: Build the app on the controller
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Run the app role's build tasks
      ansible.builtin.include_role:
        name: app
        tasks_from: build
        public: true
    - name: Write the facts the rest of the role uses
      changed_when: false  # scaffolding: the third run's changed=0 is the build's alone
      ansible.builtin.copy:
        dest: "{{ facts_out }}"
        mode: "0644"
        content: >-
          {{ {'release_id': _app_release_id, 'wheel_name': _app_wheel_name,
              'wheel_file': _app_wheel_file, 'wheelhouse': _app_wheelhouse,
              'bundle_dir': _app_bundle_dir} | to_json }}
"""


# argv: ROLE (first or second), SIGNALS (a directory), then pip's own arguments. Like pip, it
# keeps a file that is already in the -d directory.
PIP_STEP = """\
import os, subprocess, sys, tempfile, time
role, signals, *args = sys.argv[1:]
holding = os.path.join(signals, "second-is-writing")
first_done = os.path.join(signals, "first.json")
deadline = time.monotonic() + 180
def wait_for(path):
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
at = args.index("-d")
dest = args[at + 1]
with tempfile.TemporaryDirectory() as scratch:
    args[at + 1] = scratch
    subprocess.run(["uv", "tool", "run", "pip", *args], check=True)
    os.makedirs(dest, exist_ok=True)  # as pip does
    names = sorted(os.listdir(scratch))
    if role == "second":
        with open(os.path.join(scratch, names[0]), "rb") as src:
            data = src.read()
        with open(os.path.join(dest, names[0]), "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            open(holding, "w").close()
            wait_for(first_done)
            out.write(data[len(data) // 2 :])
        names = names[1:]
    else:
        wait_for(holding)
    for name in names:
        if os.path.exists(os.path.join(dest, name)):
            continue  # as pip does: "File was already downloaded"
        with open(os.path.join(scratch, name), "rb") as src:
            data = src.read()
        with open(os.path.join(dest, name), "wb") as out:
            out.write(data)
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_two_concurrent_builds_both_make_a_valid_bundle(
    ansible: AnsibleRunner, tmp_path: Path
) -> None:
    playbook = tmp_path / "build.yml"
    playbook.write_text(PLAYBOOK)
    pip_step = tmp_path / "pip_step.py"
    pip_step.write_text(PIP_STEP)
    build_dir = tmp_path / "app-build"

    def build(name: str, env: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        out = tmp_path / f"{name}.json"
        extra = {
            "app_build_dir": str(build_dir),
            "app_project_dir": str(REPO),
            "app_build_pip": [sys.executable, str(pip_step), name, str(tmp_path)],
            "facts_out": str(out),
        }
        result = ansible(
            "ansible-playbook", "-i", "localhost,", str(playbook), "-e", json.dumps(extra),
            env=env, timeout=600,
        )  # fmt: skip
        facts = json.loads(out.read_text()) if out.exists() else {}
        return result.returncode, result.stdout + result.stderr, facts

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(build, ["first", "second"]))
    for rc, output, _ in runs:
        assert rc == 0, output[-4000:]

    first, second = runs[0][2], runs[1][2]
    assert first == second, (first, second)
    release_id, wheel_name = first["release_id"], first["wheel_name"]
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*-[0-9a-f]{12}", release_id), release_id
    assert Path(first["wheel_file"]).is_file()
    assert Path(first["wheelhouse"], ".complete").is_file()

    bundle = Path(first["bundle_dir"]) / f"{release_id}.tar"
    contents: dict[str, bytes] = {}
    with tarfile.open(bundle) as tar:  # raises if it is not a complete archive
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                contents[member.name.removeprefix("./")] = handle.read()
    wheel_bytes, requirements_bytes = contents[wheel_name], contents["requirements.txt"]

    # The release id is the version and 12 hex digits of sha256(wheel sha + requirements sha).
    version = wheel_name.split("-")[1]
    digest = _sha256((_sha256(wheel_bytes) + _sha256(requirements_bytes)).encode())
    assert release_id == f"{version}-{digest[:12]}"
    # One wheel per pin in the wheelhouse, besides the app's wheel and the requirements.
    pins = [
        line.split(";")[0].strip()
        for line in requirements_bytes.decode().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    wheelhouse = sorted(set(contents) - {wheel_name, "requirements.txt"})
    assert len(wheelhouse) == len(pins) > 10, (pins, wheelhouse)
    # Every wheel is whole: a zip whose members all pass their CRC check.
    for name in [wheel_name, *wheelhouse]:
        assert name.endswith(".whl"), name
        try:
            with zipfile.ZipFile(io.BytesIO(contents[name])) as wheel_zip:
                damaged = wheel_zip.testzip()
        except zipfile.BadZipFile as exc:
            damaged = str(exc)
        assert damaged is None, f"{name} in the bundle {bundle.name} is damaged: {damaged}"
    # Nothing is left half-made: no work directory, one bundle, no stray temporary file.
    assert list((build_dir / "tmp").iterdir()) == []
    assert sorted(p.name for p in (build_dir / "bundles").iterdir()) == [f"{release_id}.tar"]

    # A third run finds everything in the cache by the sources' key: same release, nothing
    # added, and uv not run (the uv on its PATH fails).
    shim = tmp_path / "no-uv"
    shim.mkdir()
    (shim / "uv").write_text(
        "#!/bin/sh\necho 'uv must not run: the sources did not change' >&2\nexit 3\n"
    )
    (shim / "uv").chmod(0o755)
    rc, output, third = build("third", env={"PATH": f"{shim}:{BIN}:{os.environ['PATH']}"})
    assert rc == 0, output[-4000:]
    assert third == first
    assert re.search(r"localhost\s*: ok=\d+\s+changed=0 ", output), output[-2000:]


def test_check_mode_learns_the_release_id_and_writes_nothing(
    ansible: AnsibleRunner, tmp_path: Path
) -> None:
    build_dir = tmp_path / "never-made"
    result = ansible(
        "ansible", "localhost", "-i", "localhost,", "-c", "local", "--check",
        "-e", f"ansible_python_interpreter={sys.executable}", "-m", "app_bundle",
        "-a", json.dumps({"project_dir": str(REPO), "package": "slipway-app",
                          "build_dir": str(build_dir), "platforms": ["linux_x86_64"]}),
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"release_id: \d+\.\d+\.\d+\S*-[0-9a-f]{12}", result.stdout), result.stdout
    assert "- bundle" in result.stdout, result.stdout  # would be added
    assert not build_dir.exists()


_MODULE = runpy.run_path(
    str(REPO / "plugins" / "modules" / "app_bundle.py"), run_name="_app_bundle"
)


def test_publish_leaves_the_first_result_in_place(tmp_path: Path) -> None:
    winner, loser, dest = tmp_path / "a", tmp_path / "b", tmp_path / "cache" / "key"
    for src, text in ((winner, "first"), (loser, "second")):
        src.mkdir()
        (src / "f").write_text(text)
    dest.parent.mkdir()
    assert _MODULE["publish"](winner, dest) is True
    assert _MODULE["publish"](loser, dest) is False
    assert (dest / "f").read_text() == "first"
    assert (loser / "f").read_text() == "second"  # left for the run's own clean-up


def test_download_list_keeps_every_pin_without_markers_or_comments() -> None:
    pins = (
        "# autogenerated\nalembic==1.20.1\n    # via slipway-app\n"
        "async-timeout==5.0.1 ; python_full_version < '3.11.3'\n"
    )
    assert _MODULE["download_list"](pins) == "alembic==1.20.1\nasync-timeout==5.0.1\n"


def test_release_id_is_version_and_hash_of_both_checksums() -> None:
    wheel_sha, req_sha = "a" * 64, "b" * 64
    expected = hashlib.sha256((wheel_sha + req_sha).encode()).hexdigest()[:12]
    assert _MODULE["release_id"]("slipway_app-0.2.0-py3-none-any.whl", wheel_sha, req_sha) == (
        f"0.2.0-{expected}"
    )


def test_sources_key_follows_the_sources_and_not_caches_or_build_output(tmp_path: Path) -> None:
    key = _MODULE["sources_key"]
    (tmp_path / "pyproject.toml").write_text('[tool.uv.workspace]\nmembers = ["app"]\n')
    (tmp_path / "uv.lock").write_text("version = 1\n")
    src = tmp_path / "app" / "src" / "demo_app"
    src.mkdir(parents=True)
    (tmp_path / "app" / "pyproject.toml").write_text('[project]\nname = "Demo_App"\n')
    (src / "__init__.py").write_text("VALUE = 1\n")
    first = key(tmp_path, "demo-app")
    assert first is not None and re.fullmatch(r"[0-9a-f]{64}", first)

    for junk in ("__pycache__/x.cpython-311.pyc", "dist/demo_app-0.1.0.whl", ".venv/bin/python",
                 "demo_app.egg-info/PKG-INFO", "y.pyc"):  # fmt: skip
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_text("not a source")
    assert key(tmp_path, "demo-app") == first

    keys = [first]
    for change in (
        lambda: (src / "__init__.py").write_text("VALUE = 2\n"),  # an edit
        lambda: (tmp_path / "uv.lock").write_text("version = 1\n# relocked\n"),  # new pins
        lambda: (src / "new.py").write_text(""),  # a new, empty file
        lambda: (src / "new.py").rename(src / "renamed.py"),  # a rename
    ):
        change()
        keys.append(key(tmp_path, "demo-app"))
    assert len(set(keys)) == len(keys), keys

    assert key(tmp_path, "another-app") is None  # not a member: the build runs
    (tmp_path / "pyproject.toml").write_text("not [toml")
    assert key(tmp_path, "demo-app") is None
