"""Request-id validation, job input bounds, the computation, the worker launcher's precedence."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import TypeAdapter, ValidationError
from slipway_app import schemas
from slipway_app.core.config import load_settings
from slipway_app.core.middleware import valid_request_id
from slipway_app.worker import compute
from slipway_app.worker.launcher import build_worker_argv

JOB = TypeAdapter(schemas.JobIn)


@pytest.mark.parametrize("value", ["abc", "A-Z_0.9:x", "x" * 128, "0f8fad5b-d9cb-469f"])
def test_request_id_accepted(value: str) -> None:
    assert valid_request_id(value) == value


@pytest.mark.parametrize(
    "value", [None, "", "x" * 129, "has space", "new\nline", "semi;colon", "ünï", "<script>"]
)
def test_request_id_rejected(value: str | None) -> None:
    assert valid_request_id(value) is None


def test_job_input_defaults_and_routing() -> None:
    job = JOB.validate_python({"text": "hi"} | {"kind": "text"})
    assert isinstance(job, schemas.TextJob)
    assert job.iterations == 1
    assert schemas.QUEUE_FOR_KIND["gpu"] == "gpu"
    assert schemas.QUEUE_FOR_KIND["text"] == "default"


@pytest.mark.parametrize(
    "payload",
    [
        {"kind": "text", "text": ""},
        {"kind": "text", "text": "x" * (schemas.MAX_TEXT_CHARS + 1)},
        {"kind": "text", "text": "x", "iterations": 0},
        {"kind": "text", "text": "x", "iterations": schemas.MAX_ITERATIONS + 1},
        {"kind": "sleep", "seconds": -1},
        {"kind": "sleep", "seconds": schemas.MAX_SLEEP_SECONDS + 1},
        {"kind": "video", "text": "x"},
        {"kind": "text", "text": "x", "extra": 1},
        {"text": "missing kind"},
    ],
)
def test_job_input_rejected(payload: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        JOB.validate_python(payload)


def test_text_stats() -> None:
    result = compute.text_stats("The cat saw the dog.\nThe end", iterations=2)
    first = hashlib.sha256(b"The cat saw the dog.\nThe end").digest()
    assert result["sha256"] == hashlib.sha256(first).hexdigest()
    assert result["words"] == 7
    assert result["lines"] == 2
    assert result["top_words"][0] == ["the", 3]


def test_compute_sleep_is_bounded() -> None:
    assert compute.compute("sleep", {"seconds": 0})["slept_seconds"] < 1


def _opts(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_launcher_defaults_from_settings() -> None:
    settings = load_settings(
        celery_queues="gpu", celery_pool="solo", celery_concurrency=3, celery_log_level="warning"
    )
    argv = build_worker_argv(settings, [])
    assert argv[:2] == ["--quiet", "worker"]
    opts = _opts(argv)
    assert (opts["queues"], opts["pool"], opts["concurrency"], opts["loglevel"]) == (
        "gpu",
        "solo",
        "3",
        "WARNING",
    )


def test_launcher_command_line_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPWAY_CELERY_QUEUES", "gpu")
    monkeypatch.setenv("SLIPWAY_CELERY_CONCURRENCY", "8")
    monkeypatch.setenv("SLIPWAY_CELERY_POOL", "threads")
    monkeypatch.setenv("SLIPWAY_LOG_LEVEL", "ERROR")
    settings = load_settings()
    env_only = _opts(build_worker_argv(settings, []))
    assert (env_only["queues"], env_only["concurrency"], env_only["pool"]) == (
        "gpu",
        "8",
        "threads",
    )
    assert env_only["loglevel"] == "ERROR"  # SLIPWAY_CELERY_LOG_LEVEL falls back to LOG_LEVEL
    argv = build_worker_argv(
        settings,
        ["-Q", "default,gpu", "-c", "2", "--pool", "solo", "-l", "debug", "--without-mingle"],
    )
    opts = _opts(argv)
    assert (opts["queues"], opts["concurrency"], opts["pool"], opts["loglevel"]) == (
        "default,gpu",
        "2",
        "solo",
        "DEBUG",
    )
    assert argv[-1] == "--without-mingle"  # unknown options pass through to celery


def test_launcher_rejects_unknown_queue() -> None:
    with pytest.raises(SystemExit, match="video"):
        build_worker_argv(load_settings(), ["-Q", "video"])
