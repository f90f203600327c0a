"""A private ``redis-server`` for a benchmark, so no earlier run's values are there."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path


def redis_online_store(env: str) -> dict[str, str]:
    """A ``feature_store.yaml`` online store on the Redis whose address is in ``env``."""
    return {"type": "redis", "connection_string": "${" + env + "}"}


def start_redis(base: Path, env: str) -> subprocess.Popen[bytes]:
    """Start ``redis-server`` on a free port, keeping nothing on disk; its address goes into the
    environment variable ``env`` (a repository's connection string names it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(base)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.1)
    os.environ[env] = f"127.0.0.1:{port}"
    return server
