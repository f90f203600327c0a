"""Runs the scored view of ``inference_views`` on Beam's DirectRunner in a process of its own (PyFlink
and Beam pipelines cannot share one) and pickles the rows, dead letters and counts it gives.

Usage: python tests/beam_job.py MODEL_DIR SEED EVENTS KEYS OUT
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import apache_beam as beam
from conformance import generate_events
from inference_views import scored_view

from featurestore import Runner


def main(model_dir: str, seed: str, n: str, keys: str, out: str) -> None:
    view = scored_view(Path(model_dir))
    events = generate_events(int(seed), n=int(n), keys=int(keys))
    parts = Path(out).with_suffix(".parts")  # the runner may run the collecting step on a copy
    parts.mkdir()

    def keep(name: str) -> beam.PTransform:
        def write(items: list[object]) -> None:
            (parts / name).write_bytes(pickle.dumps(items))

        return beam.combiners.ToList() | f"Keep{name}" >> beam.Map(write)

    with beam.Pipeline() as pipeline:
        result = view.run(pipeline | beam.Create(events), Runner.BEAM)
        _ = result.rows | "Rows" >> keep("rows")
        _ = result.dead_letters | "Dead" >> keep("dead_letters")
        _ = result.counts | "Counts" >> keep("counts")
    collected = {part.name: pickle.loads(part.read_bytes()) for part in parts.iterdir()}
    Path(out).write_bytes(pickle.dumps(collected))


if __name__ == "__main__":
    main(*sys.argv[1:])
