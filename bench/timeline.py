#!/usr/bin/env python3
"""Deploy timeline picture: what clients saw while a rolling deploy went over the hosts.

Three stacked panels over wall time (seconds from the first request), in 1 s bins:
requests/s, p99 latency (ms, of the requests that got a response) and non-2xx + errors
(red, a flat 0 line when there were none). The audit line's events (drained, switched,
restored, ...) are vertical markers labelled host + event.

    python3 bench/timeline.py requests.jsonl audit-line.json timeline.png

``requests.jsonl`` is tools/loadgen.py's ``--out``; ``audit-line.json`` is one line of the
slipway_audit callback's log (a whole log works too: its last line is used).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

EVENT_COLOURS = {"drained": "tab:orange", "switched": "tab:purple", "restored": "tab:green"}


def load_requests(source: str | Path | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Request records from a loadgen JSONL file (or already loaded)."""
    if isinstance(source, str | Path):
        lines = Path(source).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    return list(source)


def load_audit(path: str | Path) -> dict[str, Any]:
    """One audit line: the file is that line, or an audit log whose last line is used."""
    text = Path(path).read_text(encoding="utf-8").strip()
    try:
        line = json.loads(text)
    except json.JSONDecodeError:
        line = json.loads(text.splitlines()[-1])
    if not isinstance(line, dict):
        raise ValueError(f"{path}: expected a JSON object (an audit line)")
    return line


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def bin_requests(requests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-second series from the first request: second, rps, p99_ms (None: no response
    in that second) and bad (non-2xx status or no response); t0 is the first request's
    epoch."""
    if not requests:
        return {"t0": None, "second": [], "rps": [], "p99_ms": [], "bad": []}
    t0 = min(float(r["t"]) for r in requests)
    n = int(max(float(r["t"]) for r in requests) - t0) + 1
    counts, bad = [0] * n, [0] * n
    latencies: list[list[float]] = [[] for _ in range(n)]
    for r in requests:
        i = int(float(r["t"]) - t0)
        counts[i] += 1
        status = r.get("status")
        if status is None or not 200 <= int(status) < 300:
            bad[i] += 1
        if status is not None:
            latencies[i].append(float(r["latency_ms"]))
    return {
        "t0": t0,
        "second": list(range(n)),
        "rps": counts,
        "p99_ms": [_p99(values) for values in latencies],
        "bad": bad,
    }


def plot_timeline(
    requests_jsonl: str | Path | Iterable[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    out_png: str | Path,
    title: str,
) -> dict[str, Any]:
    """Write the three-panel PNG (about 1400x900) and return the per-second series."""
    series = bin_requests(load_requests(requests_jsonl))
    t0 = series["t0"] or min((float(e["time"]) for e in events), default=0.0)
    x = [s + 0.5 for s in series["second"]]  # a bin's point sits in its middle

    fig, (ax_rps, ax_p99, ax_bad) = plt.subplots(
        3, 1, sharex=True, figsize=(14, 9), dpi=100, constrained_layout=True
    )
    fig.suptitle(title)
    ax_rps.plot(x, series["rps"], color="tab:blue", drawstyle="steps-mid")
    ax_rps.set_ylabel("requests/s")
    ax_rps.set_ylim(bottom=0)
    p99 = [math.nan if v is None else v for v in series["p99_ms"]]
    ax_p99.plot(x, p99, color="tab:gray", marker=".", markersize=3)
    ax_p99.set_ylabel("p99 latency (ms)")
    ax_p99.set_ylim(bottom=0)
    ax_bad.plot(x, series["bad"], color="tab:red", drawstyle="steps-mid")
    ax_bad.fill_between(x, series["bad"], step="mid", color="tab:red", alpha=0.3)
    ax_bad.set_ylabel("non-2xx + errors /s")
    ax_bad.set_xlabel("seconds from the first request")
    top = max([*series["bad"], 1]) * 1.1
    ax_bad.set_ylim(bottom=-0.03 * top, top=top)  # a flat 0 line stays visible above the axis

    for event in sorted(events, key=lambda e: float(e["time"])):
        at = float(event["time"]) - t0
        colour = EVENT_COLOURS.get(str(event.get("event")), "black")
        for ax in (ax_rps, ax_p99, ax_bad):
            ax.axvline(at, color=colour, linestyle="--", linewidth=1, alpha=0.8)
        ax_rps.annotate(
            f"{event.get('host', '')} {event.get('event', '')}".strip(),
            xy=(at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -4),
            textcoords="offset points",
            rotation=90,
            va="top",
            fontsize=8,
            color=colour,
        )
    for ax in (ax_rps, ax_p99, ax_bad):
        ax.grid(True, alpha=0.3)
    fig.savefig(out_png)
    plt.close(fig)
    return series


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", help="loadgen --out file (JSON lines)")
    parser.add_argument("audit", help="audit line (or audit log: last line) with the events")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--title", help="default: action, releases and result of the audit line")
    args = parser.parse_args(argv)
    audit = load_audit(args.audit)
    title = args.title or (
        f"{audit.get('action', 'run')} {audit.get('from', '?')} -> {audit.get('to', '?')} "
        f"on {len(audit.get('hosts', []))} host(s): {audit.get('result', '?')}"
    )
    series = plot_timeline(args.requests, audit.get("events", []), args.out, title)
    print(
        f"timeline: {args.out} ({len(series['second'])} s, {sum(series['rps'])} requests, "
        f"{sum(series['bad'])} non-2xx/errors)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
