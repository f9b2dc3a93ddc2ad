"""``slipway-app worker`` and ``slipway-app beat``: start Celery from the settings.

Queues, log level, pool and concurrency default to the ``SLIPWAY_CELERY_*`` settings
(environment); command-line options win. Unknown options pass through to ``celery worker``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from slipway_app.core.config import Settings

POOLS = ("prefork", "threads", "solo", "eventlet", "gevent")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slipway-app worker",
        description="Run a Celery worker. Options override SLIPWAY_CELERY_* variables; "
        "anything else is passed to `celery worker`.",
    )
    p.add_argument("-Q", "--queues", help="comma list of queues (default, gpu)")
    p.add_argument("-l", "--loglevel", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("-P", "--pool", choices=POOLS)
    p.add_argument("-c", "--concurrency", type=int)
    p.add_argument("-n", "--hostname", help="node name (default slipway-<queues>@%%h)")
    return p


def build_worker_argv(settings: Settings, args: Sequence[str]) -> list[str]:
    """The argv for ``celery_app.worker_main``: settings first, then the command line wins."""
    opts, extra = parser().parse_known_args(list(args))
    queues = opts.queues or settings.celery_queues
    unknown = sorted({q.strip() for q in queues.split(",")} - {"default", "gpu"})
    if unknown:
        raise SystemExit(f"slipway-app worker: unknown queue(s) {','.join(unknown)}")
    loglevel = (opts.loglevel or settings.worker_log_level).upper()
    pool = opts.pool or settings.celery_pool
    concurrency = opts.concurrency or settings.celery_concurrency
    hostname = opts.hostname or f"slipway-{queues.replace(',', '-')}@%h"
    return [
        "--quiet",  # no ASCII banner: stdout stays JSON lines
        "worker",
        f"--queues={queues}",
        f"--loglevel={loglevel}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--hostname={hostname}",
        *extra,
    ]


def run_worker(args: Sequence[str]) -> None:
    if os.name != "posix":  # signal remapping and the prefork pool need POSIX
        raise SystemExit("slipway-app worker: POSIX systems only")
    # SIGTERM (systemd's stop) starts Celery's soft shutdown: running tasks get
    # SLIPWAY_CELERY_SOFT_SHUTDOWN_TIMEOUT seconds, then the rest are requeued (acks_late)
    # instead of waiting unbounded for systemd's SIGKILL. Set REMAP_SIGTERM=SIGTERM to keep
    # Celery's plain warm shutdown. Must be set before celery/billiard is imported.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    from slipway_app.worker.app import celery_app, settings

    argv = build_worker_argv(settings, args)
    print("slipway-app worker: celery " + " ".join(argv), file=sys.stderr, flush=True)
    celery_app.worker_main(argv)


def run_beat(args: Sequence[str]) -> None:
    from slipway_app.worker.app import celery_app, settings

    argv = [
        "--quiet",
        "beat",
        f"--loglevel={settings.worker_log_level}",
        f"--schedule={settings.beat_schedule_file}",
        *args,
    ]
    celery_app.start(argv)
