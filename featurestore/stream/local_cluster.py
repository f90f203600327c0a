"""Keeps a local Flink mini-cluster able to run ``serve-stream``'s job.

When several of a job's Python operators fail at once (a store that went away), Flink's cleanup of
one of them can fail too (a closed Python channel, a Beam worker released twice); Flink treats that
as a fatal error of the TaskManager, and the mini-cluster stops its only TaskManager. The restarted
job then waits for task slots that never come (every task ``CREATED``, no failure reported until
the slot request times out, minutes later). A cluster's resource manager starts another
TaskManager; a mini-cluster does not, so ``serve-stream`` does it here, and the job restarts from
its last checkpoint as after any other failure.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from transforms.errors import MLFSError


def mini_cluster(client: Any) -> Any | None:
    """The Java ``MiniCluster`` that runs a job submitted to a local environment (PyFlink's
    ``JobClient`` wraps a ``MiniClusterJobClient``, which holds it in a private field); None where
    a Flink version holds it otherwise (the job then runs without a keeper, as before)."""
    try:
        java_client = client._j_job_client
        holder = java_client.getClass().getDeclaredField("miniCluster")
        holder.setAccessible(True)
        return holder.get(java_client)
    except Exception:  # py4j wraps Java's NoSuchFieldException
        return None


class LocalTaskManagers:
    """Starts a TaskManager in place of each one the mini-cluster stopped (at most ``limit`` in
    all: a TaskManager that keeps dying is an error), counting TaskManagers through Flink's REST
    API; a TaskManager counts as gone only after the cluster was seen with it."""

    POLL_S = 1.0

    def __init__(self, rest: str, start_one: Callable[[], None], limit: int) -> None:
        self.url = f"{rest}/taskmanagers"
        self.start_one, self.limit = start_one, limit
        self.started = 0
        self._most = 0  # the most TaskManagers seen registered since the last start
        self._last = 0.0

    def revive(self) -> int:
        """How many TaskManagers were started in place of stopped ones now (0 most of the time)."""
        if time.monotonic() - self._last < self.POLL_S:
            return 0
        self._last = time.monotonic()
        registered = self.registered()
        if registered is None:
            return 0
        self._most = max(self._most, registered)
        missing = self._most - registered
        if missing <= 0:
            return 0
        if self.started + missing > self.limit:
            raise MLFSError(
                f"Flink's local TaskManager stopped {self.started + missing} times (a fatal error in "
                "a task; see the Flink log); the job cannot go on"
            )
        for _ in range(missing):
            self.start_one()
        self.started += missing
        self._most = 0  # the new ones register within a few seconds
        return missing

    def registered(self) -> int | None:
        """TaskManagers registered with the cluster (``None`` while its REST API does not answer)."""
        try:
            with urllib.request.urlopen(self.url, timeout=2) as answer:
                return len(json.load(answer)["taskmanagers"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
