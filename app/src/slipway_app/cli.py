"""``slipway-app``: the commands a deploy calls.

slipway-app check-config [--json]     exit 0 valid, 2 invalid (message names the variable)
slipway-app migrate upgrade [REV]     default head; prints from/to revisions; a database
                                      ahead of this release is left as it is (exit 0), one at
                                      an unknown revision too (exit 5)
slipway-app migrate current [--json]  prints current=.. head=.. status=..; exit 0 at-head,
                                      3 behind, 4 ahead (a newer release migrated; this one
                                      still serves), 5 unknown (not descended from this
                                      release's head), 1 database error
slipway-app migrate downgrade REV
slipway-app migrate heads             the head revision(s) shipped in this wheel, comma-joined;
                                      reads no settings and no database
slipway-app serve [GUNICORN ARGS]     exec gunicorn with slipway_app.gunicorn_conf
slipway-app worker [-Q ..] [-l ..] [-P ..] [-c ..] [CELERY ARGS]
slipway-app beat [CELERY ARGS]
slipway-app version
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from slipway_app import __version__
from slipway_app.core.config import ConfigError, Settings, get_settings

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_BEHIND = 3
EXIT_AHEAD = 4
EXIT_UNKNOWN = 5
STATUS_EXIT = {"at-head": EXIT_OK, "behind": EXIT_BEHIND, "ahead": EXIT_AHEAD}

PASSTHROUGH = ("worker", "beat", "serve")


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        print(f"slipway-app: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slipway-app", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    cc = sub.add_parser("check-config", help="validate SLIPWAY_* settings")
    cc.add_argument("--json", action="store_true", help="print the settings (redacted) as JSON")
    mig = sub.add_parser("migrate", help="Alembic migrations shipped in this wheel")
    msub = mig.add_subparsers(dest="action", required=True)
    up = msub.add_parser("upgrade", help="upgrade to REV (default head)")
    up.add_argument("revision", nargs="?", default="head")
    cur = msub.add_parser(
        "current", help="exit 0 at-head, 3 behind, 4 ahead, 5 unknown, 1 database error"
    )
    cur.add_argument("--json", action="store_true", help='print {"current","heads","status"}')
    down = msub.add_parser("downgrade", help="downgrade to REV (e.g. -1, base, 0001)")
    down.add_argument("revision")
    msub.add_parser("heads", help="print the head revision(s) of this wheel (no settings read)")
    sub.add_parser("version", help="print the package version and release id")
    for name in PASSTHROUGH:
        sub.add_parser(name, help=f"see `slipway-app {name} --help`", add_help=False)
    return p


def _migrate(action: str, revision: str | None, as_json: bool = False) -> int:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from slipway_app.core import migrate

    if action == "heads":  # the wheel's scripts only: runs before any env file exists
        print(",".join(migrate.script_heads()))
        return EXIT_OK
    settings = _settings()
    try:
        before = migrate.state(settings)
        if action == "current":
            print(json.dumps(before.as_dict()) if as_json else before.describe())
            return STATUS_EXIT.get(before.status, EXIT_UNKNOWN)
        if action == "upgrade" and before.status in ("ahead", "unknown"):
            # Alembic cannot move from a revision it does not know; say why, change nothing.
            cur = ",".join(before.current)
            print(
                f"upgrade: unchanged from={cur} to={cur} head={','.join(before.heads)} "
                f"status={before.status}"
            )
            if before.status == "unknown":
                print(f"slipway-app migrate upgrade: {before.problem()}", file=sys.stderr)
                return EXIT_UNKNOWN
            return EXIT_OK
        if action == "upgrade":
            migrate.upgrade(settings, revision or "head")
        else:
            assert revision is not None
            migrate.downgrade(settings, revision)
        after = migrate.state(settings)
    except SQLAlchemyError as exc:
        print(f"slipway-app migrate {action}: database error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except CommandError as exc:
        print(f"slipway-app migrate {action}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    changed = before.current != after.current
    cur = ",".join(before.current) or "none"
    new = ",".join(after.current) or "none"
    print(
        f"{action}: {'changed' if changed else 'unchanged'} from={cur} to={new} "
        f"head={','.join(after.heads)}"
    )
    return EXIT_OK


def _serve(args: Sequence[str]) -> None:
    _settings()  # fail with a readable message before gunicorn starts
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:slipway_app.gunicorn_conf",
        *args,
        "slipway_app.main:app",
    ]
    os.execv(sys.executable, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in PASSTHROUGH:
        command, rest = args[0], args[1:]
        if command == "serve":
            _serve(rest)
        _settings()
        from slipway_app.worker import launcher

        if command == "worker":
            launcher.run_worker(rest)
        else:
            launcher.run_beat(rest)
        return EXIT_OK
    ns = _parser().parse_args(args)
    if ns.command == "check-config":
        settings = _settings()
        if ns.json:
            print(json.dumps(settings.summary(), indent=2, default=str))
        else:
            print(f"configuration ok: env={settings.env} release_id={settings.release_id}")
        return EXIT_OK
    if ns.command == "version":
        print(json.dumps({"version": __version__, "release_id": _settings().release_id}))
        return EXIT_OK
    if ns.command == "migrate":
        return _migrate(ns.action, getattr(ns, "revision", None), getattr(ns, "json", False))
    return EXIT_ERROR  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
