"""Job input (bounded, strict) and output schemas of ``/api/jobs``; the queue of each kind."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

MAX_TEXT_CHARS = 100_000
MAX_ITERATIONS = 100_000
MAX_SLEEP_SECONDS = 30.0

QUEUE_FOR_KIND = {"text": "default", "sleep": "default", "gpu": "gpu"}


def _storable(text: str) -> str:
    """Text PostgreSQL can store: UTF-8 encodable (no lone surrogates, which JSON's ``\\ud800``
    escapes can carry) and without NUL, which a ``text`` or ``jsonb`` value cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text must be valid Unicode (it has a lone surrogate)") from exc
    if "\x00" in text:
        raise ValueError("text must not contain NUL (\\u0000) characters")
    return text


def _whole_number(value: Any) -> Any:
    """JSON Schema's ``integer`` includes ``5.0``; strict mode alone would refuse it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _JobIn(BaseModel):
    # strict: no coercion, so false is not 0 seconds and "5" is not 5 iterations.
    model_config = ConfigDict(extra="forbid", strict=True)


class TextJob(_JobIn):
    """sha256 (iterated ``iterations`` times) and word statistics of ``text``."""

    kind: Literal["text"]
    text: Annotated[str, AfterValidator(_storable)] = Field(
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        # Said in the published schema too (lone surrogates have no regex fuzzers accept).
        json_schema_extra={"pattern": r"^[^\u0000]*$"},
        description="Any Unicode text without NUL characters or lone surrogates.",
    )
    iterations: Annotated[int, BeforeValidator(_whole_number)] = Field(1, ge=1, le=MAX_ITERATIONS)


class GpuJob(TextJob):
    """Same computation as ``text``, routed to the ``gpu`` queue (GPU hosts consume it)."""

    kind: Literal["gpu"]  # type: ignore[assignment]


class SleepJob(_JobIn):
    """Sleeps ``seconds`` then reports it: a bounded long task for shutdown/redelivery tests."""

    kind: Literal["sleep"]
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
