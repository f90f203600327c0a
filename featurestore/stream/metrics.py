"""A streaming job's metrics: the status line it prints and the Prometheus endpoint it serves.

The figures come from the status files the job's workers write (``featurestore.stream.sinks``):
events in and their four outcomes, rows out, online writes, the watermark's lag behind the wall
clock, and freshness (a write's time minus the newest feature time it wrote).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from featurestore.stream.sinks import StreamStatus, read_status


@dataclass
class ViewMetrics:
    view: str
    status: StreamStatus
    out_of_orderness_ms: int

    @property
    def watermark_lag_s(self) -> float | None:
        if self.status.max_event_ms is None:
            return None
        return time.time() - (self.status.max_event_ms - self.out_of_orderness_ms) / 1000

    def line(self) -> str:
        c, sink = self.status.counts, self.status.sink
        freshness = "-" if sink.freshness_ms is None else f"{sink.freshness_ms / 1000:.1f}s"
        lag = self.watermark_lag_s
        return (
            f"{self.view}: {c.input} events in, {sink.rows_out} rows out ({sink.online_written} online), "
            f"{c.dead_lettered} dead-lettered, {c.late} late, {c.filtered} filtered; "
            f"watermark lag {'-' if lag is None else f'{lag:.1f}s'}, freshness {freshness}"
        )


def collect(status_dir: Path, views: dict[str, int]) -> list[ViewMetrics]:
    """Metrics of ``views`` (name -> the source's max out-of-orderness in ms)."""
    return [ViewMetrics(name, read_status(status_dir, name), ooo) for name, ooo in views.items()]


_COUNTERS = [
    ("events_in", "Events read", lambda m: m.status.counts.input),
    ("events_aggregated", "Events that produced rows", lambda m: m.status.counts.aggregated),
    ("events_filtered", "Events the transform dropped", lambda m: m.status.counts.filtered),
    ("events_dead_lettered", "Bad events sent to the dead letter", lambda m: m.status.counts.dead_lettered),
    ("events_late", "Events beyond the allowed lateness", lambda m: m.status.counts.late),
    ("rows_out", "Feature rows written since the job started", lambda m: m.status.sink.rows_out),
    ("online_writes", "Keys written to the online store", lambda m: m.status.sink.online_written),
    (
        "rows_dead_lettered",
        "Feature rows a model stage could not score",
        lambda m: m.status.sink.rows_dead_lettered,
    ),
]


def prometheus_text(metrics: list[ViewMetrics]) -> str:
    """The Prometheus text exposition of ``metrics``."""
    lines = []
    for name, help_text, count in _COUNTERS:
        lines += [f"# HELP mlfs_{name}_total {help_text}.", f"# TYPE mlfs_{name}_total counter"]
        lines += [f'mlfs_{name}_total{{view="{m.view}"}} {count(m)}' for m in metrics]
    gauges: list[tuple[str, str, Callable[[ViewMetrics], float | None]]] = [
        ("watermark_lag_seconds", "Wall clock minus the watermark", lambda m: m.watermark_lag_s),
        (
            "freshness_seconds",
            "Last online write time minus the newest feature time it wrote",
            lambda m: None if m.status.sink.freshness_ms is None else m.status.sink.freshness_ms / 1000,
        ),
    ]
    for name, help_text, gauge in gauges:
        lines += [f"# HELP mlfs_{name} {help_text}.", f"# TYPE mlfs_{name} gauge"]
        for m in metrics:
            value = gauge(m)
            if value is not None:
                lines.append(f'mlfs_{name}{{view="{m.view}"}} {value:.3f}')
    return "\n".join(lines) + "\n"


def serve_metrics(host: str, port: int, source: Callable[[], list[ViewMetrics]]) -> ThreadingHTTPServer:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (port 0 picks a free one)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = prometheus_text(source()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
