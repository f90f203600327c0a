"""Runs every conformance view (each window kind, each kind of event transform) over tied events on
Beam's DirectRunner, in a process of its own (PyFlink and Beam pipelines cannot share one), and
pickles each view's rows, dead letters and counts.

Usage: python tests/beam_conformance_job.py SEED OUT
"""

from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import apache_beam as beam
from conformance import TRANSFORMS, WINDOWS, conformance_view, tied_events

from featurestore import Runner


def main(seed: str, out: str) -> None:
    events = tied_events(int(seed))
    parts = Path(tempfile.mkdtemp(prefix="mlfs-beam-"))  # the runner may collect on a copy

    def keep(name: str) -> beam.PTransform:
        def write(items: list[Any]) -> None:
            (parts / name).write_bytes(pickle.dumps(items))

        return beam.combiners.ToList() | f"Keep{name}" >> beam.Map(write)

    for transform in TRANSFORMS:  # view names repeat across transforms: one pipeline each
        with beam.Pipeline() as pipeline:
            raw = pipeline | beam.Create(events)
            for window in WINDOWS:
                result = conformance_view(window, transform).run(raw, Runner.BEAM)
                for part in ("rows", "dead_letters", "counts"):
                    _ = getattr(result, part) | f"{window}-{part}" >> keep(f"{transform}.{window}.{part}")
    collected = {path.name: pickle.loads(path.read_bytes()) for path in parts.iterdir()}
    Path(out).write_bytes(pickle.dumps(collected))


if __name__ == "__main__":
    main(*sys.argv[1:])
