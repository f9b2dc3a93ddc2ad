"""Celery task outcome counters, kept in Redis so every web worker can export them.

Workers run on other processes (often other hosts) than Gunicorn, so the counts live in
one Redis hash, ``slipway:metrics:celery_tasks``, field ``<task>|<outcome>``. ``/metrics``
reads the hash and exports it as ``slipway_celery_tasks_total{task,outcome}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

HASH_KEY = "slipway:metrics:celery_tasks"
OUTCOMES = ("success", "failure", "retry", "rejected", "revoked")

log = logging.getLogger(__name__)


def record(client: Any, task: str, outcome: str) -> None:
    """HINCRBY one outcome; a Redis failure is logged, never raised into the task."""
    try:
        client.hincrby(HASH_KEY, f"{task}|{outcome}", 1)
    except Exception as exc:
        log.warning("could not record task outcome", extra={"error": str(exc)})


def parse(raw: dict[Any, Any]) -> Iterator[tuple[str, str, float]]:
    for key, value in raw.items():
        field = key.decode() if isinstance(key, bytes) else str(key)
        task, sep, outcome = field.partition("|")
        if sep and outcome in OUTCOMES:
            yield task, outcome, float(value)


class TaskOutcomeCollector(Collector):
    """A one-shot collector over a hash fetched by the ``/metrics`` handler."""

    def __init__(self, raw: dict[Any, Any] | None) -> None:
        self.raw = raw

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        family = CounterMetricFamily(
            "slipway_celery_tasks",
            "Celery task outcomes reported by the workers (stored in Redis).",
            labels=["task", "outcome"],
        )
        for task, outcome, value in parse(self.raw or {}):
            family.add_metric([task, outcome], value)
        yield family
        yield GaugeMetricFamily(
            "slipway_celery_task_metrics_up",
            "1 if the task outcome counters could be read from Redis on this scrape.",
            value=0.0 if self.raw is None else 1.0,
        )
