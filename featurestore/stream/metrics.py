"""A streaming job's metrics: the status line it prints and the Prometheus endpoint it serves.

The figures come from the status files the job's workers write (``featurestore.stream.sinks``):
events in and their four outcomes, rows out, online writes, the watermark's lag behind the wall
clock, and freshness (a write's time minus the newest feature time it wrote).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from featurestore.stream.sinks import StreamStatus, read_status
from transforms.events import EventCounts


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
        waiting = f", {self.waiting} waiting for joins" if self.waiting else ""
        joined = "".join(
            f"; from {source}: {j.input} events in, {j.dead_lettered} dead-lettered, {j.late} late"
            for source, j in sorted(self.status.source_counts.items())
        )
        return (
            f"{self.view}: {c.input} events in, {sink.rows_out} rows out ({sink.online_written} online), "
            f"{c.dead_lettered} dead-lettered, {c.late} late, {c.filtered} filtered{waiting}; "
            f"watermark lag {'-' if lag is None else f'{lag:.1f}s'}, freshness {freshness}{joined}"
        )

    @property
    def waiting(self) -> int:
        """Events a view with joins has read whose joins have not yet been decided (they wait for
        the other sides' watermarks); always 0 for a view without joins."""
        c = self.status.counts
        return max(0, c.input - c.aggregated - c.filtered - c.dead_lettered - c.late)


@dataclass
class JobHealth:
    """The streaming job as ``serve-stream`` last saw it: Flink's state of the job, and how many
    times it restarted from a checkpoint after a failure."""

    state: str = "CREATED"
    restarts: int = 0
    consistency: dict[str, float] = field(default_factory=dict)  # view -> sampled mismatch ratio

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


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


_JOINED_COUNTERS: list[tuple[str, str, Callable[[EventCounts], int]]] = [
    ("events_in", "Events read from an interval join's other source", lambda c: c.input),
    ("events_dead_lettered", "Bad events of an interval join's other source", lambda c: c.dead_lettered),
    ("events_late", "Events of an interval join's other source beyond its lateness", lambda c: c.late),
]


def prometheus_text(metrics: list[ViewMetrics], job: JobHealth | None = None) -> str:
    """The Prometheus text exposition of ``metrics`` (and of the job's state and restarts)."""
    lines = []
    if job is not None:
        lines += [
            "# HELP mlfs_job_running Whether the streaming job is running (1) or not (0).",
            "# TYPE mlfs_job_running gauge",
            f"mlfs_job_running {int(job.running)}",
            "# HELP mlfs_job_state The streaming job's state (Flink's name for it) as a label, always 1.",
            "# TYPE mlfs_job_state gauge",
            f'mlfs_job_state{{state="{job.state}"}} 1',
            "# HELP mlfs_job_restarts_total Restarts of the job from its last checkpoint after a failure.",
            "# TYPE mlfs_job_restarts_total counter",
            f"mlfs_job_restarts_total {job.restarts}",
            "# HELP mlfs_consistency_mismatch_ratio Sampled keys whose online row differs from offline.",
            "# TYPE mlfs_consistency_mismatch_ratio gauge",
            *(
                f'mlfs_consistency_mismatch_ratio{{view="{v}"}} {r:.4f}'
                for v, r in sorted(job.consistency.items())
            ),
        ]
    for name, help_text, count in _COUNTERS:
        lines += [f"# HELP mlfs_{name}_total {help_text}.", f"# TYPE mlfs_{name}_total counter"]
        lines += [f'mlfs_{name}_total{{view="{m.view}"}} {count(m)}' for m in metrics]
    for name, help_text, joined_count in _JOINED_COUNTERS:
        lines += [f"# HELP mlfs_joined_{name}_total {help_text}.", f"# TYPE mlfs_joined_{name}_total counter"]
        lines += [
            f'mlfs_joined_{name}_total{{view="{m.view}",source="{source}"}} {joined_count(counts)}'
            for m in metrics
            for source, counts in sorted(m.status.source_counts.items())
        ]
    gauges: list[tuple[str, str, Callable[[ViewMetrics], float | None]]] = [
        ("events_waiting", "Events waiting for their joins", lambda m: m.waiting),
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


def serve_metrics(
    host: str, port: int, source: Callable[[], list[ViewMetrics]], job: Callable[[], JobHealth] | None = None
) -> ThreadingHTTPServer:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (port 0 picks a free one), and
    ``/healthz``: 200 while the job runs, 503 with its state otherwise."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics":
                self._answer(
                    200, prometheus_text(source(), job() if job else None), "text/plain; version=0.0.4"
                )
            elif path == "/healthz":
                health = job() if job else JobHealth("RUNNING")
                code = 200 if health.running else 503
                self._answer(code, f"{health.state.lower()}, {health.restarts} restart(s)\n", "text/plain")
            else:
                self.send_error(404, "only /metrics and /healthz are served here")

        def _answer(self, code: int, text: str, kind: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
