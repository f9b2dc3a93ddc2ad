"""The jobs feature: input schemas (bounded) and the computations the worker runs."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT_CHARS = 100_000
MAX_ITERATIONS = 100_000
MAX_SLEEP_SECONDS = 30.0
TOP_WORDS = 5

QUEUE_FOR_KIND = {"text": "default", "sleep": "default", "gpu": "gpu"}

_WORD = re.compile(r"\w+", re.UNICODE)


class _JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextJob(_JobIn):
    """sha256 (iterated ``iterations`` times) and word statistics of ``text``."""

    kind: Literal["text"] = "text"
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    iterations: int = Field(1, ge=1, le=MAX_ITERATIONS)


class GpuJob(TextJob):
    """Same computation as ``text``, routed to the ``gpu`` queue (GPU hosts consume it)."""

    kind: Literal["gpu"] = "gpu"  # type: ignore[assignment]


class SleepJob(_JobIn):
    """Sleeps ``seconds`` then reports it: a bounded long task for shutdown/redelivery tests."""

    kind: Literal["sleep"] = "sleep"
    seconds: float = Field(ge=0, le=MAX_SLEEP_SECONDS)


JobIn = Annotated[TextJob | GpuJob | SleepJob, Field(discriminator="kind")]


class JobOut(BaseModel):
    id: uuid.UUID
    kind: str
    queue: str
    status: str
    attempts: int
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


def text_stats(text: str, iterations: int = 1) -> dict[str, Any]:
    data = text.encode("utf-8")
    digest = hashlib.sha256(data).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha256(digest).digest()
    words = [w.lower() for w in _WORD.findall(text)]
    counts = Counter(words)
    return {
        "sha256": digest.hex(),
        "iterations": iterations,
        "chars": len(text),
        "bytes": len(data),
        "lines": text.count("\n") + 1,
        "words": len(words),
        "unique_words": len(counts),
        "top_words": [[w, c] for w, c in counts.most_common(TOP_WORDS)],
    }


def compute(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one job; ``params`` were validated by the API before they were stored."""
    if kind in ("text", "gpu"):
        return text_stats(params["text"], int(params.get("iterations", 1)))
    if kind == "sleep":
        seconds = min(float(params["seconds"]), MAX_SLEEP_SECONDS)
        started = time.monotonic()
        time.sleep(seconds)
        return {"slept_seconds": round(time.monotonic() - started, 3)}
    raise ValueError(f"unknown job kind {kind!r}")
