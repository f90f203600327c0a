"""Runs two views with joins on Beam's DirectRunner, in a process of its own (PyFlink and Beam
pipelines cannot share one): a lookup of another view's rows, and an interval join of messy JSON
lines then a lookup. Pickles each view's rows, dead letters, counts and other sources' counts.

Usage: python tests/beam_join_job.py OUT
"""

from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import apache_beam as beam
from test_join_conformance import join_cases

from featurestore import Runner


def main(out: str) -> None:
    parts = Path(tempfile.mkdtemp(prefix="mlfs-beam-"))  # the runner may collect on a copy

    def keep(name: str) -> beam.PTransform:
        def write(items: list[Any]) -> None:
            (parts / name).write_bytes(pickle.dumps(items))

        return beam.combiners.ToList() | f"Keep{name}" >> beam.Map(write)

    for name, (view, events, stats, stats_rows, sources) in join_cases().items():
        with beam.Pipeline() as pipeline:
            lookups = {stats.name: (stats.plan, pipeline | "Stats" >> beam.Create(stats_rows))}
            others = {s: pipeline | f"Source-{s}" >> beam.Create(raws) for s, raws in sources.items()}
            raw = pipeline | "Events" >> beam.Create(events)
            result = view.run(raw, Runner.BEAM, lookups=lookups, sources=others)
            for part in ("rows", "dead_letters", "counts", "source_counts"):
                pcoll = getattr(result, part)
                if pcoll is not None:
                    _ = pcoll | f"{name}-{part}" >> keep(f"{name}.{part}")
    collected = {path.name: pickle.loads(path.read_bytes()) for path in parts.iterdir()}
    Path(out).write_bytes(pickle.dumps(collected))


if __name__ == "__main__":
    main(*sys.argv[1:])
