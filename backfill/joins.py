"""What a backfill of a view with joins reads besides its own history (DESIGN §2b).

A looked-up view's rows are computed together with the view that looks it up, by the same engine
over the looked-up view's whole history (and, for a chain, over the rows of the views it looks up
in turn), so the enrichment is point-in-time correct whatever ranges the looked-up views were
backfilled over. An interval join reads its other source's whole history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from backfill.history import JSON_LINES, arrow_batches, history_files, is_json_lines
from featurestore.repo import FeatureRepo
from featurestore.view import StreamFeatureView
from transforms.engines.base import get_engine, lookup_rows
from transforms.errors import MLFSError
from transforms.joining import JoinInputs, LookupTable


def source_files(repo: FeatureRepo, source: Any) -> list[Path]:
    """A source's history files; a one-line error when there are none or formats are mixed."""
    path = Path(source.history)
    path = path if path.is_absolute() else repo.settings.repo_path / path
    files = history_files(path)
    if not files:
        raise MLFSError(f"source {source.name!r}: no history at {path}")
    if not is_json_lines(files) and any(f.suffix in JSON_LINES for f in files):
        raise MLFSError(f"source {source.name!r}: the history mixes Parquet and JSON-lines files")
    return files


def history_table(files: list[Path]) -> pa.Table:
    """A whole history as one table of raw events (Parquet columns or JSON lines)."""
    batches = list(arrow_batches(files))
    if not batches:
        return pa.table({})
    return pa.Table.from_batches(batches)


class JoinReader:
    """The ``JoinInputs`` of the views of one backfill, on one engine; each looked-up view's rows
    are computed once per run."""

    def __init__(self, repo: FeatureRepo, engine: str) -> None:
        self.repo = repo
        self.engine = engine
        self._rows: dict[str, LookupTable] = {}

    def inputs(self, view: StreamFeatureView) -> JoinInputs | None:
        """What ``view``'s joins read (None for a view without joins)."""
        plan = view.plan
        if not plan.joins:
            return None
        inputs = JoinInputs()
        for lookup in plan.lookups:
            inputs.lookups[lookup.view] = self.rows(lookup.view)
        for join in plan.interval_joins:
            inputs.sources[join.source_name] = history_table(source_files(self.repo, join.source))
        return inputs

    def files(self, view: StreamFeatureView) -> list[Path]:
        """Every history file ``view``'s joins read (through chains of lookups too)."""
        out: list[Path] = []
        for lookup in view.plan.lookups:
            target = self.repo.view(lookup.view)
            out += source_files(self.repo, target.source) + self.files(target)
        for join in view.plan.interval_joins:
            out += source_files(self.repo, join.source)
        return out

    def rows(self, name: str) -> LookupTable:
        """The feature rows of view ``name`` over its whole history."""
        if name not in self._rows:
            view = self.repo.view(name)
            events = history_table(source_files(self.repo, view.source))
            self._rows[name] = lookup_rows(get_engine(self.engine), view.plan, events, self.inputs(view))
        return self._rows[name]
