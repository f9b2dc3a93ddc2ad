"""Gunicorn configuration: ``gunicorn -c python:slipway_app.gunicorn_conf slipway_app.main:app``.

Everything comes from the same ``SLIPWAY_*`` settings as the app. Prometheus multiprocess
mode is set up here, in the master, before any worker imports the app: the directory is
``PROMETHEUS_MULTIPROC_DIR`` (made and emptied at start; a private temp dir when unset),
and a dead worker's live gauges are dropped in ``child_exit``. The app is imported once, in
the master (``preload_app``), so a restart is one import, not one per worker.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile
from typing import Any

from slipway_app.core.config import ConfigError, get_settings
from slipway_app.core.logs import logging_dict

try:
    _settings = get_settings()
except ConfigError as _exc:
    sys.exit(f"slipway-app: configuration error: {_exc}")

_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
    prefix="slipway-metrics-"
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

wsgi_app = "slipway_app.main:app"
bind = [_settings.bind]
workers = _settings.workers
worker_class = "uvicorn_worker.UvicornWorker"
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
forwarded_allow_ips = _settings.forwarded_allow_ips
proc_name = "slipway-app"
# The master imports the app once, before it tells systemd it is ready, and forks workers
# that serve at once. Without it every worker imported the app after fork, all at the same
# time: on a restart, connections queued on the socket until the first import finished, 5x
# longer on a busy 2-core host (restart under CPU load: clients waited 31.6 s, 5.1 s with
# this). Connections (database, Redis, Celery) are opened in the lifespan, in each worker;
# prometheus-client's multiprocess values follow the fork (a file per worker pid).
preload_app = True
control_socket_disable = True  # newer gunicorn: no control socket in $HOME
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = None  # the app's middleware writes the JSON access line (with request id)
errorlog = "-"
loglevel = _settings.log_level.lower()
logconfig_dict = logging_dict(_settings.log_level, _settings.release_id)


def on_starting(server: Any) -> None:
    """Master start: an empty metrics directory, so old workers' counts do not linger."""
    os.makedirs(_metrics_dir, mode=0o750, exist_ok=True)
    for path in glob.glob(os.path.join(_metrics_dir, "*.db")):
        os.unlink(path)
    server.log.info(
        "starting slipway-app",
        extra={"bind": bind, "workers": workers, "metrics_dir": _metrics_dir},
    )


def child_exit(server: Any, worker: Any) -> None:
    """A worker died or was stopped: mark it dead for prometheus-client."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _metrics_dir)
