"""``slipway-app``: the commands a deploy calls.

slipway-app check-config [--json]     exit 0 valid, 2 invalid (message names the variable)
slipway-app migrate upgrade [REV]     default head; prints from/to revisions
slipway-app migrate current           exit 0 at head, 3 behind head, 1 database error
slipway-app migrate downgrade REV
slipway-app migrate heads             the head revision shipped in this wheel
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
    msub.add_parser("current", help="exit 0 at head, 3 behind, 1 on error")
    down = msub.add_parser("downgrade", help="downgrade to REV (e.g. -1, base, 0001)")
    down.add_argument("revision")
    msub.add_parser("heads", help="print the head revision of this wheel")
    sub.add_parser("version", help="print the package version and release id")
    for name in PASSTHROUGH:
        sub.add_parser(name, help=f"see `slipway-app {name} --help`", add_help=False)
    return p


def _migrate(action: str, revision: str | None) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from slipway_app.core import migrate

    settings = _settings()
    try:
        if action == "heads":
            print(",".join(migrate.script_heads(settings)))
            return EXIT_OK
        before = migrate.state(settings)
        if action == "current":
            print(before.describe())
            return EXIT_OK if before.at_head else EXIT_BEHIND
        if action == "upgrade":
            migrate.upgrade(settings, revision or "head")
        else:
            assert revision is not None
            migrate.downgrade(settings, revision)
        after = migrate.state(settings)
    except SQLAlchemyError as exc:
        print(f"slipway-app migrate {action}: database error: {exc}", file=sys.stderr)
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
        return _migrate(ns.action, getattr(ns, "revision", None))
    return EXIT_ERROR  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
