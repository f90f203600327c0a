"""The streaming job's status line and Prometheus text, from the workers' status files."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from featurestore.stream.metrics import JobHealth, collect, prometheus_text, serve_metrics


def write_status(directory: Path) -> None:
    directory.mkdir(parents=True)
    counts = {"input": 10, "aggregated": 6, "filtered": 2, "dead_lettered": 1, "late": 1, "rows": 7}
    for part in ("a", "b"):  # two instances are summed
        (directory / f"v.stage1.{part}.json").write_text(
            json.dumps({"counts": counts, "max_event_ms": int(time.time() * 1000) - 60_000})
        )
    sink = {"rows_out": 4, "online_written": 3, "online_skipped_older": 0, "offline_rows": 4}
    (directory / "v.sink.a.json").write_text(json.dumps({**sink, "last_write": 5.0, "freshness_ms": 1500.0}))


def test_prometheus_text_and_status_line(tmp_path: Path) -> None:
    write_status(tmp_path / "status")
    [metrics] = collect(tmp_path / "status", {"v": 5000})
    text = prometheus_text([metrics])
    assert 'mlfs_events_in_total{view="v"} 20' in text
    assert 'mlfs_events_late_total{view="v"} 2' in text
    assert 'mlfs_rows_out_total{view="v"} 4' in text
    assert 'mlfs_freshness_seconds{view="v"} 1.500' in text
    assert "# TYPE mlfs_watermark_lag_seconds gauge" in text
    assert metrics.watermark_lag_s is not None and 64 < metrics.watermark_lag_s < 66  # 60 s + the 5 s bound
    assert metrics.line().startswith("v: 20 events in, 4 rows out (3 online), 2 dead-lettered, 2 late")


def test_a_joined_view_shows_its_other_source_and_the_events_waiting_for_their_joins(tmp_path: Path) -> None:
    directory = tmp_path / "status"
    directory.mkdir()
    own = {"input": 10, "aggregated": 4, "filtered": 2, "dead_lettered": 1, "late": 0, "rows": 4}
    (directory / "v.stage1.0.json").write_text(json.dumps({"counts": own, "max_event_ms": 1}))
    other = {"input": 7, "aggregated": 5, "filtered": 0, "dead_lettered": 1, "late": 1, "rows": 0}
    (directory / "v.source.refunds.json").write_text(json.dumps({"counts": other, "max_event_ms": 1}))
    [metrics] = collect(directory, {"v": 0})
    assert metrics.waiting == 3
    assert "1 dead-lettered, 0 late, 2 filtered, 3 waiting for joins;" in metrics.line()
    assert metrics.line().endswith("; from refunds: 7 events in, 1 dead-lettered, 1 late")
    text = prometheus_text([metrics])
    assert 'mlfs_joined_events_in_total{view="v",source="refunds"} 7' in text
    assert 'mlfs_joined_events_late_total{view="v",source="refunds"} 1' in text
    assert 'mlfs_events_waiting{view="v"} 3.000' in text


def test_metrics_endpoint(tmp_path: Path) -> None:
    """``/metrics`` has the views' figures and the job's state and restarts; ``/healthz`` is 200
    while the job runs and 503 with the state when it does not."""
    write_status(tmp_path / "status")
    health = JobHealth("RUNNING", restarts=2)
    server = serve_metrics("127.0.0.1", 0, lambda: collect(tmp_path / "status", {"v": 0}), lambda: health)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'mlfs_online_writes_total{view="v"} 3' in text
        for line in ("mlfs_job_running 1", 'mlfs_job_state{state="RUNNING"} 1', "mlfs_job_restarts_total 2"):
            assert line in text.splitlines()
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert response.status == 200 and response.read().decode() == "running, 2 restart(s)\n"

        health.state = "RESTARTING"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert err.value.code == 503 and err.value.read().decode() == "restarting, 2 restart(s)\n"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert "mlfs_job_running 0" in response.read().decode().splitlines()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/other", timeout=5)
        assert err.value.code == 404
    finally:
        server.shutdown()


@pytest.mark.parametrize("state", ["starting", "running", "stopping"])
def test_a_job_record_no_longer_refreshed_is_lost(tmp_path: Path, state: str) -> None:
    # A serve-stream killed while stopping left "stopping" for good; any state of a live job that
    # stops refreshing its record reads as lost.
    from featurestore.runstatus import STALE_AFTER_S, StreamJobRecord, stream_job_state, write_json

    record = StreamJobRecord(tmp_path, ["v"], "local")
    for written, read in ((state, "lost"), ("stopped", "stopped")):
        record.write(state=written)
        assert stream_job_state(tmp_path)["state"] == written  # type: ignore[index]
        write_json(record.path, {**record.data, "heartbeat": time.time() - STALE_AFTER_S - 1})
        assert stream_job_state(tmp_path)["state"] == read  # type: ignore[index]
