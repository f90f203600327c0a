"""Registry lookups over a generated registry of N views (default 10,000): latency of list, filter,
search and get through the HTTP API (`mlfs registry serve` in a subprocess, a real HTTP client),
in process through the ``Catalog``, and the same tag filter through the stock Feast SDK.

    python benchmarks/registry_lookup.py [--views 10000] [--repeat 50]

Prints p50/p99 milliseconds per lookup and checks that the API and Feast return the same views.
"""

from __future__ import annotations

import argparse
import gc
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from featurestore.cli import main as mlfs
from featurestore.config import feast_store
from featurestore.repo import load_repo
from registry.catalog import load_catalog
from registry.synthetic import register, synthetic_objects


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    fn()  # warm
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))], result


def line(label: str, p50: float, p99: float, note: str = "") -> None:
    print(f"  {label:<60} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "repo"
        assert mlfs(["init", str(path), "--events", "100"]) == 0
        assert mlfs(["apply", "--repo", str(path)]) == 0
        repo = load_repo(path)
        store = feast_store(repo.settings)
        started = time.perf_counter()
        objects = synthetic_objects(
            repo.views["user_payment_stats_7d"], [store.get_entity("user")], args.views
        )
        register(store, objects)
        print(f"registered {args.views:,} synthetic views in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        catalog = load_catalog(store)
        gc.collect()
        gc.freeze()  # as the server does: the catalog's objects are long-lived
        print(f"catalog loaded in {time.perf_counter() - started:.2f}s ({len(catalog.views):,} views)")

        print("In process (Catalog):")
        for label, fn in [
            ("list every view", lambda: catalog.list_views()),
            ("views with tag team=risk", lambda: catalog.list_views(tag="team=risk")),
            ("views with a feature containing 'refund'", lambda: catalog.list_views(feature="refund")),
            ("search 'refund' (all kinds)", lambda: catalog.search("refund")),
            ("get one view's definition", lambda: catalog.view("view_04242").detail()),
        ]:
            p50, p99, result = timed(fn, args.repeat)
            line(label, p50, p99, f"{len(result):,} results" if isinstance(result, list) else "")

        print("Stock Feast SDK (for proportion):")
        p50, p99, feast_views = timed(
            lambda: store.list_feature_views(allow_cache=True, tags={"team": "risk"}),
            max(3, args.repeat // 10),
        )
        line("list_feature_views(tags={'team': 'risk'}), cached", p50, p99, f"{len(feast_views):,} results")
        p50, p99, _ = timed(lambda: store.list_feature_views(allow_cache=False, tags={"team": "risk"}), 3)
        line("list_feature_views(tags={'team': 'risk'}), from the file", p50, p99)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlfs")),
                "registry",
                "serve",
                "--port",
                str(port),
                "--repo",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    requests.get(f"{url}/api/health", timeout=2).raise_for_status()
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, "the registry server did not start"
                    time.sleep(0.2)
            session = requests.Session()

            def get(path: str, **params: Any) -> Any:
                answer = session.get(f"{url}{path}", params=params, timeout=10)
                answer.raise_for_status()
                return answer.json()

            print("HTTP API (mlfs registry serve, one client, keep-alive):")
            for label, fn in [
                ("GET /api/views (first page of 100)", lambda: get("/api/views")),
                ("GET /api/views?tag=team=risk (page of 100)", lambda: get("/api/views", tag="team=risk")),
                ("GET /api/views?feature=refund", lambda: get("/api/views", feature="refund")),
                ("GET /api/search?q=refund (page of 50)", lambda: get("/api/search", q="refund")),
                ("GET /api/features?name=login", lambda: get("/api/features", name="login")),
                ("GET /api/views/view_04242", lambda: get("/api/views/view_04242")),
            ]:
                p50, p99, result = timed(fn, args.repeat)
                note = f"{result['total']:,} matched" if "total" in result else ""
                line(label, p50, p99, note)
            everything = get("/api/views", tag="team=risk", limit=1000)
            names = [v["name"] for v in everything["items"]]
            offset = everything["next_offset"]
            while offset is not None:
                page = get("/api/views", tag="team=risk", limit=1000, offset=offset)
                names += [v["name"] for v in page["items"]]
                offset = page["next_offset"]
            same = sorted(names) == sorted(v.name for v in feast_views)
            print(
                f"  API and Feast agree on the tag filter: {'yes' if same else 'NO'} ({len(names):,} views)"
            )
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
