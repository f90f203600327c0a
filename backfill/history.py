"""A source's history as the backfill engines read it: Parquet files, or JSON-lines files (the
stream's own format, so hostile lines get the dead letters the stream gives them).

A history is one file or a directory of files (hidden ones skipped), all of one format, read in
name order. JSON lines are split as the stream's reader splits them (``\\n``, ``\\r`` or ``\\r\\n``;
an empty line is an event, and unparseable) and handed to stage 1 as raw bytes: in batches with
the one binary column ``transforms.stage1.LINE`` for the embedded and Spark engines, one by one for
the reference.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from featurestore.repo import FeatureRepo
from featurestore.view import StreamFeatureView
from transforms.dtypes import DType, UnixTimestamp, holds_values_of
from transforms.errors import MLFSError
from transforms.expressions import Select
from transforms.json_batches import needed_fields
from transforms.stage1 import BATCH_ROWS, LINE, ROW_ID, WholeRows

PARQUET = (".parquet",)
JSON_LINES = (".jsonl", ".ndjson")
_BLOCK = 1 << 24  # bytes read at a time from a JSON-lines file


def history_path(repo: FeatureRepo, view: StreamFeatureView) -> Path:
    path = Path(view.source.history)
    return path if path.is_absolute() else repo.settings.repo_path / path


def history_files(path: Path) -> list[Path]:
    """The history's files, in name order (a directory's Parquet or JSON-lines files)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        suffixes = PARQUET + JSON_LINES
        return sorted(p for p in path.rglob("*") if p.suffix in suffixes and not p.name.startswith("."))
    return []


def is_json_lines(files: list[Path]) -> bool:
    """Whether the history is JSON lines (every file named ``.jsonl`` or ``.ndjson``)."""
    return bool(files) and all(f.suffix in JSON_LINES for f in files)


def file_lines(path: Path) -> Iterator[bytes]:
    """The lines of a JSON-lines file as bytes, split where the stream's reader splits them."""
    rest = b""
    with path.open("rb") as file:
        while block := file.read(_BLOCK):
            data = rest + block
            cut = data.rfind(b"\n")
            if cut < 0:  # no line ends here yet (or only a \r, which a \n may follow)
                rest = data
                continue
            yield from data[: cut + 1].splitlines()
            rest = data[cut + 1 :]
    if rest:
        yield from rest.splitlines()


def arrow_batches(files: list[Path], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The history as Arrow batches for stage 1: Parquet's own columns, or JSON lines as ``LINE``."""
    if not is_json_lines(files):
        yield from ds.dataset([str(f) for f in files], format="parquet").to_batches(batch_size=batch_rows)
        return
    schema = pa.schema([pa.field(LINE, pa.binary())])
    lines: list[bytes] = []
    for file in files:
        for line in file_lines(file):
            lines.append(line)
            if len(lines) == batch_rows:
                yield pa.record_batch([pa.array(lines, pa.binary())], schema=schema)
                lines = []
    if lines:
        yield pa.record_batch([pa.array(lines, pa.binary())], schema=schema)


class ParquetHistory:
    """A Parquet history read with only ``columns`` (what a declarative view reads: decoding the
    rest costs more than the view), each row numbered (``ROW_ID``, in the order ``arrow_batches``
    reads them), so that the few events stage 1 takes row by row are read whole by ``whole_rows``:
    a dead letter carries the whole raw event."""

    def __init__(self, files: list[Path], columns: list[str]) -> None:
        self.dataset = ds.dataset([str(f) for f in files], format="parquet")
        names = self.dataset.schema.names
        self.columns = [c for c in columns if c in names]
        self.groups: list[tuple[Any, int]] = []  # (fragment, row group) in reading order
        self.starts: list[int] = []  # the first row number of each
        row = 0
        for fragment in self.dataset.get_fragments():
            for group in fragment.row_groups:
                self.groups.append((fragment, group.id))
                self.starts.append(row)
                row += group.num_rows
        self._cached: tuple[int, pa.Table] | None = None

    def batches(self, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        row = 0
        for batch in self.dataset.to_batches(columns=self.columns, batch_size=batch_rows):
            ids = pa.array(np.arange(row, row + batch.num_rows, dtype=np.int64))
            row += batch.num_rows
            yield pa.RecordBatch.from_arrays([*batch.columns, ids], names=[*batch.schema.names, ROW_ID])

    def whole_rows(self, ids: list[int]) -> list[dict[str, Any]]:
        """The events numbered ``ids`` (ascending) with every column, read a row group at a time."""
        rows: list[dict[str, Any]] = []
        i = 0
        while i < len(ids):
            index = bisect_right(self.starts, ids[i]) - 1
            end = self.starts[index + 1] if index + 1 < len(self.starts) else ids[-1] + 1
            j = bisect_right(ids, end - 1, lo=i)
            local = [row - self.starts[index] for row in ids[i:j]]
            rows.extend(self._group(index).take(local).to_pylist())
            i = j
        return rows

    def _group(self, index: int) -> pa.Table:
        if self._cached is None or self._cached[0] != index:
            fragment, group = self.groups[index]
            table = fragment.subset(row_group_ids=[group]).to_table(schema=self.dataset.schema)
            self._cached = (index, table)
        return self._cached[1]


def history_batches(
    view: StreamFeatureView, files: list[Path]
) -> tuple[Iterator[pa.RecordBatch], WholeRows | None]:
    """Stage 1's input batches of a view's history: a Parquet history of a declarative view without
    joins read with only the columns it reads (``ParquetHistory``, with its ``whole_rows``), any
    other as ``arrow_batches``."""
    fields = needed_fields(view.plan)
    if fields is None or view.plan.joins or is_json_lines(files):
        return arrow_batches(files), None
    history = ParquetHistory(files, fields)
    return history.batches(), history.whole_rows


def count_events(files: list[Path]) -> int | None:
    """How many events the history holds, for a progress bar: Parquet's metadata says; JSON lines
    would have to be read twice, so their bar counts without a total (None)."""
    if is_json_lines(files):
        return None
    return ds.dataset([str(f) for f in files], format="parquet").count_rows()


def read_history(path: Path | list[Path], batch_rows: int = 65_536) -> Iterator[Any]:
    """The history's events (at ``path``, or its ``history_files``, or the files given, in order)
    one by one, for the reference engine: Parquet rows as dicts, JSON lines as the raw bytes the
    stream would hand on."""
    files = path if isinstance(path, list) else history_files(path)
    for same_kind in _runs_of_one_kind(files):  # a list may mix them: history, then stream files
        if is_json_lines(same_kind):
            for file in same_kind:
                yield from file_lines(file)
            continue
        dataset = ds.dataset([str(p) for p in same_kind], format="parquet")
        for batch in dataset.to_batches(batch_size=batch_rows):
            yield from batch.to_pylist()


def _runs_of_one_kind(files: list[Path]) -> list[list[Path]]:
    """``files`` in order, cut where they change from JSON lines to Parquet or back."""
    runs: list[list[Path]] = []
    for file in files:
        if runs and is_json_lines([runs[-1][-1]]) == is_json_lines([file]):
            runs[-1].append(file)
        else:
            runs.append([file])
    return runs


def history_columns(view: StreamFeatureView) -> dict[str, DType]:
    """The history columns a view reads, with the type each must hold, where the view says (a
    Python event transform may read anything, so only its time field is known)."""
    plan = view.plan
    wanted: dict[str, DType] = dict(plan.keys)
    for feature in plan.features:
        if feature.aggregation.column is not None and feature.input_dtype is not None:
            wanted.setdefault(feature.aggregation.column, feature.input_dtype)
    transform = plan.event_transform
    if isinstance(transform, Select):  # what a plain col(...) renames must hold the output's type
        renamed = {out: spec[1] for out, spec in transform.spec()["select"].items() if spec[0] == "col"}
        wanted = {renamed[out]: dtype for out, dtype in wanted.items() if out in renamed}
    elif transform is not None:
        wanted = {}
    wanted.pop(plan.timestamp_field, None)  # every engine replaces it by the event time
    return {plan.timestamp_field: UnixTimestamp, **wanted}


def check_history(view: StreamFeatureView, files: list[Path]) -> None:
    """Refuse, before any work, a history of mixed formats, a file that cannot be read, or a
    Parquet file whose column types cannot hold what the view reads (one line naming the file, the
    column and both types). JSON lines are typed event by event, as the stream types them."""
    if is_json_lines(files):
        for file in files:
            try:
                with file.open("rb"):
                    pass
            except OSError as err:
                raise MLFSError(f"history file {file} is not readable: {err.strerror or err}") from None
        return
    mixed = [f for f in files if f.suffix in JSON_LINES]
    if mixed:
        raise MLFSError(
            f"view {view.name!r}: the history mixes Parquet and JSON-lines files ({mixed[0]}); "
            "keep one format per source"
        )
    wanted = history_columns(view)
    for file in files:
        try:
            schema = pq.read_schema(file)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MLFSError(f"history file {file} is not readable Parquet: {first}") from None
        if view.plan.timestamp_field not in schema.names:
            raise MLFSError(
                f"history file {file} has no column {view.plan.timestamp_field!r} "
                f"(view {view.name!r}'s time field)"
            )
        for name, dtype in wanted.items():
            if name in schema.names and not holds_values_of(schema.field(name).type, dtype):
                raise MLFSError(
                    f"history file {file}: column {name!r} is {schema.field(name).type}, "
                    f"but view {view.name!r} needs {dtype} values from it"
                )
