"""The migrations step: a release with an expand-only migration (0002) is deployed under
load while the old release keeps serving; rollback.yml across it is refused with both ways
out and moves nothing; `-e rollback_migrations=accept` rolls back onto the newer database
(the old release is ready: the database descends from its head); after a second deploy of
the migrating release, `-e rollback_migrations=downgrade` rolls back and the database is at
the old head again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checks import flat, off_release, web_current
from .config import DEPLOY, ROLLBACK
from .releases import release_vars

if TYPE_CHECKING:
    from .steps import Trial

# `slipway-app migrate current --json` of the active release, run like the units run it.
MIGRATE_CURRENT = [
    "systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--service-type=exec",
    "--property=EnvironmentFile=/etc/slipway/app.env", "--uid=slipway", "--gid=slipway",
    "/opt/slipway/current/venv/bin/slipway-app", "migrate", "current", "--json",
]  # fmt: skip


def step_migrations(t: Trial, r: dict[str, Any]) -> None:
    before = t.last or t.probe("start")
    r["from"] = web_current(before)
    extra = release_vars(t.release("mig", "mig", migration=True), t.project)
    run = t.loaded("migrations", r, DEPLOY, extra)
    r["release"] = web_current(t.probe("migrations-deployed"))
    t.verdict("migrations", mig_deploy_ok=run.rc == 0 and r["release"] not in (None, r["from"]))

    refused = t.run("migrations-refused", ROLLBACK)
    said = flat(refused.output)
    r["refused"] = {"rc": refused.rc, "log": str(refused.log)}
    r["untouched"] = off_release(t.probe("migrations-refused"), r["release"])
    t.verdict(
        "migrations",
        mig_refused=refused.rc != 0
        and "rollback_migrations=downgrade" in said
        and "rollback_migrations=accept" in said,
        mig_untouched=not r["untouched"],
    )

    accept = t.run("migrations-accept", ROLLBACK, {"rollback_migrations": "accept"})
    problems = off_release(t.probe("migrations-accepted"), r["from"])
    r["accepted"] = {"rc": accept.rc, "log": str(accept.log), "problems": problems}
    t.verdict("migrations", mig_accept_ok=accept.rc == 0 and not problems)

    again = t.run("migrations-redeploy", DEPLOY, extra)
    down = t.run("migrations-downgrade", ROLLBACK, {"rollback_migrations": "downgrade"})
    after = t.probe("migrations")
    problems = off_release(after, r["from"])
    first = (after.get("web") or [""])[0]
    database = t.ad_hoc(first, "ansible.builtin.command", {"argv": MIGRATE_CURRENT})
    state = database.get("stdout", "{}")
    r["downgraded"] = {"redeploy_rc": again.rc, "rc": down.rc, "log": str(down.log),
                       "problems": problems}  # fmt: skip
    r["database"] = state
    at_old_head = '"at-head"' in state and '"0001"' in state and '"0002"' not in state
    t.verdict(
        "migrations",
        mig_downgrade_ok=again.rc == 0 and down.rc == 0 and not problems and at_old_head,
    )
