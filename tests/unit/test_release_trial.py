"""tools/release_trial without VMs: the release copy and patch (a tmp git repository),
command building, the dry run, and the evaluation of what the probe and the playbooks said."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plugins.modules.app_lock import FleetLock
from tests.conftest import REPO
from tools import loadgen
from tools.release_trial import checks, cli, config, releases, runner, steps

GOOD, OLD, BAD = "0.1.0-aaaaaaaaaaaa", "0.1.0-bbbbbbbbbbbb", "0.1.0-cccccccccccc"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with the app files the trial patches, an ignored and an untracked file."""
    root = tmp_path / "repo"
    (root / "app/src/slipway_app/core").mkdir(parents=True)
    (root / releases.MARKED_FILE).write_text('"""app"""\n')
    (root / releases.READINESS_FILE).write_text((REPO / releases.READINESS_FILE).read_text())
    (root / ".gitignore").write_text(".cache/\n*.log\n")
    (root / "tracked.txt").write_text("t\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (root / "untracked.txt").write_text("u\n")
    (root / "ignored.log").write_text("i\n")
    (root / "tracked.txt").unlink()  # tracked but deleted: skipped
    return root


def web(current: str, serving: str | None = None, healthy: bool = True) -> dict[str, object]:
    return {"web": True, "current": current, "serving": serving or current, "healthy": healthy}


def probe(**hosts: dict[str, object]) -> dict[str, object]:
    return {"hosts": hosts, "web": [h for h, v in hosts.items() if v.get("web")]}


def test_release_copies_tracked_and_untracked_files_not_ignored_ones_nor_the_output(
    repo: Path,
) -> None:
    out = repo / "trial-out"  # inside the repository and not ignored: must not copy itself
    out.mkdir()
    (out / "old.txt").write_text("x\n")
    copy = releases.make_release(repo, out, "good-1", "1")
    assert copy == out / "src-good-1"
    files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert files == [".gitignore", releases.MARKED_FILE, releases.READINESS_FILE, "untracked.txt"]
    assert (copy / releases.MARKED_FILE).read_text().endswith("# trial release 1\n")
    assert (copy / releases.READINESS_FILE).read_text() == (
        repo / releases.READINESS_FILE
    ).read_text()
    again = releases.make_release(repo, out, "good-1", "2")  # a second run starts from a fresh copy
    assert (again / releases.MARKED_FILE).read_text().count("# trial release") == 1


def test_release_files_outside_a_repository_fail_with_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(config.TrialError, match=r"git -C .* ls-files"):
        releases.release_files(tmp_path)


def test_bad_release_readiness_adds_a_failing_check_to_the_real_ones(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = releases.make_release(repo, tmp_path / "out", "bad", "bad", bad=True)
    spec = importlib.util.spec_from_file_location("trial_readiness", copy / releases.READINESS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "trial_readiness", module)
    spec.loader.exec_module(module)
    check = module.CheckResult

    async def original(*args: object, **kwargs: object) -> dict[str, object]:
        assert args == ("engine", "redis", "graph", 2.0)
        return {"database": check("ok")}

    monkeypatch.setattr(module, "_trial_original_readiness", original)
    answered = asyncio.run(module.readiness("engine", "redis", "graph", 2.0))
    assert answered["database"].status == "ok"
    assert answered["trial"].status == "fail"
    assert answered["trial"].error == "trial release built to fail readiness"
    assert (copy / releases.MARKED_FILE).read_text().endswith("# trial release bad\n")


def test_migrating_release_adds_one_expand_only_head_after_the_shipped_one(tmp_path: Path) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    copy = releases.make_release(config.REPO, tmp_path / "out", "mig", "mig", migration=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(copy / "app/src/slipway_app/migrations"))
    scripts = ScriptDirectory.from_config(cfg)
    assert scripts.get_heads() == ["0002"]
    assert scripts.get_revision("0002").down_revision == "0001"
    assert "op.add_column" in (copy / releases.MIGRATION_FILE).read_text()


def test_playbook_argv_env_and_load_argv(tmp_path: Path) -> None:
    argv = runner.playbook_argv(
        "/v/ansible-playbook", config.DEPLOY, "inv", "web1,worker", {"a": "b c"}
    )
    assert argv == [
        "/v/ansible-playbook",
        "-i",
        "inv",
        config.DEPLOY,
        "--limit",
        "web1,worker",
        "-e",
        '{"a": "b c"}',
    ]
    assert runner.playbook_argv("ap", config.STATUS, "inv", None, {}) == [
        "ap",
        "-i",
        "inv",
        config.STATUS,
    ]
    env = runner.trial_env(tmp_path, tmp_path / "out", {"PATH": "/first", "KEEP": "1"})
    assert env["PATH"].split(":") == ["/first", str(Path(sys.executable).parent)]
    assert env["ANSIBLE_CONFIG"] == str(tmp_path / "ansible.cfg")
    assert env["SLIPWAY_AUDIT_LOG"] == str(tmp_path / "out" / "audit.log")
    assert env["KEEP"] == "1"
    assert (
        runner.trial_env(tmp_path, tmp_path, {"ANSIBLE_FORCE_COLOR": "1"})["ANSIBLE_FORCE_COLOR"]
        == "0"
    )
    assert releases.release_vars(tmp_path / "c", tmp_path) == {
        "app_project_dir": str(tmp_path / "c"),
        "app_build_dir": str(tmp_path / ".cache" / "app-build"),
    }
    load = runner.load_argv(parse_dry(tmp_path, "--playbook-timeout", "5000"), "deploy", tmp_path)
    assert load[1:3] == ["-m", "tools.loadgen"]
    assert load[load.index("--duration") + 1] == "1800"  # loadgen's own maximum
    assert load[load.index("--stop-file") + 1] == str(tmp_path / "deploy-stop")
    assert load[load.index("--connect") + 1] == "10.0.0.5:443"
    assert load[load.index("--cacert") + 1] == "/ca.pem"
    # The client outwaits nginx, so a slow request's verdict (200, or 504) is nginx's.
    nginx = yaml.safe_load((REPO / "roles/nginx/defaults/main.yml").read_text())
    assert int(load[load.index("--timeout") + 1]) > nginx["nginx_proxy_read_timeout"]
    # ... and tools.loadgen takes every value it is given (its bounds refuse a bad one).
    loadgen.parse(load[3:]).check()
    plain = cli.parse(["--inventory", "i", "--url", "http://c.test/", "--out", str(tmp_path)])
    assert "--connect" not in runner.load_argv(plain, "rollback", tmp_path)


def test_off_release_names_every_host_that_is_not_on_the_release() -> None:
    fleet = probe(web1=web(GOOD), web2=web(GOOD), worker={"web": False, "current": GOOD})
    assert checks.off_release(fleet, GOOD) == []
    fleet["hosts"]["web2"] = web(GOOD, serving=OLD)  # type: ignore[index]
    fleet["hosts"]["worker"]["current"] = OLD  # type: ignore[index]
    problems = checks.off_release(fleet, GOOD)
    assert problems == [
        f"web2 has current {GOOD}, serves {OLD}, live and ready (expected {GOOD})",
        f"worker has current {OLD} (expected {GOOD})",
    ]
    assert checks.off_release(fleet, GOOD, web_only=True) == problems[:1]
    assert "NOT live and ready" in checks.off_release(probe(web1=web(GOOD, healthy=False)), GOOD)[0]
    assert checks.off_release({"hosts": {}}, GOOD) == ["the probe saw no web host"]
    assert checks.web_current(fleet) == GOOD
    assert checks.web_current({}) is None


def test_release_states_and_single() -> None:
    fleet = probe(
        web1={
            **web(GOOD),
            "releases": [{"id": GOOD, "state": "active"}, {"id": BAD, "state": "failed"}],
        },
        web2={**web(GOOD), "releases": [{"id": GOOD, "state": "active"}]},
    )
    assert checks.release_states(fleet, BAD) == {"web1": "failed"}
    assert checks.release_states(fleet, GOOD) == {"web1": "active", "web2": "active"}
    assert checks.release_states(fleet, None) == {}
    assert checks.single(GOOD) == GOOD
    assert checks.single(f"{GOOD},{OLD}") is None
    assert checks.single("?") is None
    assert checks.single(None) is None


# The bad deploy's failure as the yaml result format prints it: quoted, folded, indented.
BAD_OUTPUT = f"""
TASK [app : Stop the deploy] ******
fatal: [mol-cluster-web1]: FAILED! =>
    changed: false
    msg: 'The deploy to {BAD} stopped at mol-cluster-web1: Health gate, asked of this
        host directly - live and ready on {BAD}: /health/ready answered 503. mol-cluster-web1
        is back on {GOOD} and serving; hosts not yet reached were not touched, so the
        fleet serves what it served. {BAD} is marked failed (never a rollback target).
        Read `journalctl -u slipway-web.service -n 50` on mol-cluster-web1 and
        `playbooks/status.yml`; fix the release and deploy again.'
PLAY RECAP ******
"""


def test_stopped_at_reads_release_host_and_message_across_folded_lines() -> None:
    release, host, message = checks.stopped_at(BAD_OUTPUT)
    assert (release, host) == (BAD, "mol-cluster-web1")
    assert message.startswith(f"The deploy to {BAD} stopped at mol-cluster-web1: Health gate")
    assert message.endswith("fix the release and deploy again.")
    assert checks.stopped_at("PLAY RECAP ok=3") == (None, None, "")
    coloured = "\n".join(f"\x1b[0;31m{line}\x1b[0m" for line in BAD_OUTPUT.splitlines())
    assert checks.stopped_at(coloured) == (release, host, message)


STATUS_OUTPUT = f"""
TASK [app : Show the fleet] ****
ok: [web1] =>
    msg:
    - 'web1: current {GOOD}, serving {GOOD}, ready; rollback target
        {OLD}'
    - '    {GOOD}  active  deployed 2026-12-02T08:00:00Z'
    - 'web2: current {GOOD}, serving {OLD}, ready; rollback target {OLD}'
    - 'worker: current {GOOD}, serving -, no web service; rollback target {OLD}'
    - 'lock on web1: free'
"""


def test_status_mismatches_compare_each_host_line_with_the_probe() -> None:
    fleet = probe(
        web1=web(GOOD), web2=web(GOOD), worker={"web": False, "current": GOOD, "serving": None}
    )
    assert checks.status_mismatches(STATUS_OUTPUT, fleet) == [
        f"web2's line does not say serving {GOOD}"
    ]
    fleet["hosts"]["worker"]["current"] = OLD  # type: ignore[index]
    assert f"worker's line does not say current {OLD}" in checks.status_mismatches(
        STATUS_OUTPUT, fleet
    )
    assert checks.status_mismatches("", probe(web9=web(GOOD))) == [
        f"web9's line does not say current {GOOD}"
    ]


def test_stale_lock_is_what_app_lock_writes_and_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "deploy.lock"
    now = 1_800_000_000.0
    lock = FleetLock(str(path), clock=lambda: now)
    params = {
        "holder": "me",
        "operation": "restart",
        "token": "mine",
        "ttl": 3600,
        "break_lock": False,
        "hint": "",
    }
    lock.acquire(params, check=False)
    written = json.loads(path.read_text())
    path.write_text(json.dumps(checks.stale_lock("dead-run", now)))
    stale = lock.read()
    assert stale is not None
    assert set(stale) == set(written)
    assert lock.stale(stale, 3600)
    taken = lock.acquire(params, check=False)
    assert taken["broke_stale"]
    assert taken["previous"]["token"] == "dead-run"


def test_ad_hoc_result_reads_the_module_result_as_yaml_or_json() -> None:
    # as `ansible HOST -m app_lock` prints it with this repository's ansible.cfg
    out = "web1 | SUCCESS => \n    age: 3605.7\n    changed: false\n    held: true\n"
    out += (
        "    lock:\n        holder: me@ctl\n        refreshed_at_iso: '2026-12-02T08:17:37+00:00'\n"
    )
    assert checks.ad_hoc_result(out) == {
        "age": 3605.7,
        "changed": False,
        "held": True,
        "lock": {"holder": "me@ctl", "refreshed_at_iso": "2026-12-02T08:17:37+00:00"},
    }
    assert checks.ad_hoc_result('w | SUCCESS => {"held": false, "lock": null}') == {
        "held": False,
        "lock": None,
    }
    # as `ansible HOST -m ansible.builtin.command` prints it (the trial's migrations step)
    said = 'web1 | CHANGED | rc=0 >>\n{"current": ["0001"], "status": "at-head"}\n'
    assert checks.ad_hoc_result(said) == {
        "rc": 0,
        "stdout": '{"current": ["0001"], "status": "at-head"}',
    }
    with pytest.raises(config.TrialError, match="no module result"):
        checks.ad_hoc_result("web1 | UNREACHABLE!")


def test_every_check_has_a_sentence_filled_from_its_figures() -> None:
    source = Path(steps.__file__).read_text()
    used = set()
    for call in source.split("self.verdict(")[1:]:
        used |= {line.strip().split("=")[0] for line in call.split(")\n")[0].splitlines()[1:]}
    used = {name for name in used if name.isidentifier()} | {"ran", "rc_ok"}
    assert used <= set(checks.WHY), used - set(checks.WHY)
    figures = {"playbook": "deploy.yml", "rc": 2, "log": "/o/deploy.log", "problems": "p"}
    assert checks.WHY["rc_ok"].format(**figures) == "deploy.yml exited 2; read /o/deploy.log"


def test_verdict_records_checks_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trial = steps.Trial(parse_dry(tmp_path))
    trial.result["deploy"] = {
        "checks": {},
        "problems": ["web2 serves X", "worker on Y"],
        "failed_requests": 3,
        "total_requests": 900,
        "by_status": {"502": 3},
        "errors": [],
        "requests": "/o/r.jsonl",
    }
    trial.verdict("deploy", hosts_on_new=False, no_failed_requests=False, rc_ok=True)
    assert trial.result["deploy"]["checks"] == {
        "hosts_on_new": False,
        "no_failed_requests": False,
        "rc_ok": True,
    }
    assert trial.failures == [
        "deploy: not every host runs the new release: web2 serves X; worker on Y",
        "deploy: 3 of 900 requests failed ({'502': 3}, []); each is a line of /o/r.jsonl",
    ]


def parse_dry(tmp_path: Path, *extra: str) -> argparse.Namespace:
    return cli.parse(
        [
            "--inventory",
            "inv",
            "--url",
            "https://c.test/health/ready",
            "--connect",
            "10.0.0.5:443",
            "--cacert",
            "/ca.pem",
            "--out",
            str(tmp_path / "out"),
            "--dry-run",
            *extra,
        ]
    )


def test_dry_run_prints_every_command_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        cli.main(
            [
                "--inventory",
                "inv",
                "--url",
                "https://c.test/health/ready",
                "--connect",
                "10.0.0.5:443",
                "--cacert",
                "ca.pem",
                "--out",
                str(tmp_path / "out"),
                "--limit",
                "web1:web2:worker",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    assert [line for line in out.splitlines() if line.startswith("## ")] == [
        "## deploy",
        "## bad",
        "## rollback",
        "## concurrent",
        "## task",
        "## migrations",
    ]
    playbooks = [p for p in out.split() if p.startswith(("playbooks/", "tools/trial_probe"))]
    assert playbooks.count(config.DEPLOY) == 6  # good-1, bad, good-2 twice, mig twice
    assert playbooks.count(config.STATUS) == 6  # after every step
    # rollback: once, then refused, accept and downgrade across the migration
    assert playbooks.count(config.ROLLBACK) == 4 and playbooks.count(config.RESTART) == 2
    assert out.count("--limit web1:web2:worker") == out.count("ansible-playbook -i inv")
    assert f"ANSIBLE_CONFIG={REPO}/ansible.cfg SLIPWAY_AUDIT_LOG={tmp_path}/out/audit.log" in out
    assert "POST https://c.test/api/jobs" in out and "-m tools.loadgen" in out
    assert "src-bad, append '# trial release bad'" in out


def test_steps_subset_and_unknown_step(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--inventory", "i", "--url", "http://c.test/", "--out", str(tmp_path), "--dry-run"]
    assert cli.main([*base, "--steps", "rollback,status"]) == 0
    out = capsys.readouterr().out
    assert "## deploy" not in out and "## rollback" in out and config.STATUS in out
    with pytest.raises(SystemExit):
        cli.main([*base, "--steps", "deploy,nope"])
    assert "unknown ['nope']" in capsys.readouterr().err


def test_missing_inventory_fails_with_a_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "--inventory",
        str(tmp_path / "nope"),
        "--url",
        "http://c.test/",
        "--out",
        str(tmp_path),
    ]
    assert cli.main(argv) == 1
    assert f"--inventory {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
