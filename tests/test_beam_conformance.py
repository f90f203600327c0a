"""The Beam engine gives exactly the reference engine's rows, dead letters and counts on events with
many ties per key and time, for every window kind and kind of event transform."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from conformance import TRANSFORMS, WINDOWS, assert_same_rows, conformance_view, tied_events

pytestmark = pytest.mark.slow


def test_tied_events_equal_reference(tmp_path: Path) -> None:
    seed = 19
    out = tmp_path / "beam.pkl"
    job = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("beam_conformance_job.py")), str(seed), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    got = pickle.loads(out.read_bytes())
    events = tied_events(seed)
    for transform in TRANSFORMS:
        for window in WINDOWS:
            view = conformance_view(window, transform)
            expected = view.run(events)
            name = f"{transform}.{window}"
            assert_same_rows(view, expected.rows, got[f"{name}.rows"])  # two rows of a key and time fail
            assert got[f"{name}.counts"] == [expected.counts], name
            assert sorted((d.reason, d.raw) for d in got[f"{name}.dead_letters"]) == sorted(
                (d.reason, d.raw) for d in expected.dead_letters
            ), name
