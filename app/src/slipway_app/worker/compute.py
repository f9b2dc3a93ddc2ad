"""What each job kind computes; the worker runs it on parameters the API validated."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from typing import Any

from slipway_app.schemas import MAX_SLEEP_SECONDS

TOP_WORDS = 5

_WORD = re.compile(r"\w+", re.UNICODE)


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
