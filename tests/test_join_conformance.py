"""Joins (DESIGN §2b) on every engine that runs them equal the reference: lookups of another view as
of each event's time (inclusive and exclusive, keys on one side only, ties with the looked-up
rows, chained views, keys of the wrong type) and stream-stream interval joins."""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conformance import BASE, assert_same_result, tied_events, write_events
from conftest import make_view
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.history import read_history
from featurestore import (
    Count,
    FileStreamSource,
    Float64,
    Int64,
    IntervalJoin,
    Latest,
    Lookup,
    Max,
    Runner,
    Select,
    Sliding,
    Sum,
    Tumbling,
    UnixTimestamp,
    col,
)
from featurestore.view import StreamFeatureView
from transforms.engines.base import get_engine
from transforms.engines.duckdb_joins import JoinedEventStage
from transforms.engines.reference import raw_events
from transforms.joining import JoinInputs, LookupTable
from transforms.stage1 import LINE

STATS_FEATURES = {
    "n": (Int64, Count()),
    "sum_v": (Float64, Sum("v")),
    "latest_ts": (UnixTimestamp, Latest("timestamp")),
}
ENRICHED_FEATURES = {
    "n": (Int64, Count()),
    "n_found": (Int64, Count("b_n")),
    "sum_bn": (Int64, Sum("b_n")),
    "max_bsum": (Float64, Max("b_sum_v")),
    "latest_bts": (UnixTimestamp, Latest("b_latest_ts")),
    "sum_gap": (Float64, Sum("gap")),
}


def stats_view(name: str = "stats") -> StreamFeatureView:
    return make_view(dict(STATS_FEATURES), window=Sliding(timedelta(seconds=5)), name=name)


def with_gap(event: dict[str, Any]) -> Any:
    """A Python transform over the joined event: drops, fails, and reads the looked-up fields."""
    if event.get("kind") == "drop":
        return None
    if event.get("kind") == "boom":
        raise ValueError("boom")
    v, b = event.get("v"), event.get("b_sum_v")
    return {**event, "gap": None if v is None or b is None else v - b}


DECLARATIVE = Select(
    where=col("kind") != "drop",
    user_id=col("user_id"),
    b_n=col("b_n"),
    b_sum_v=col("b_sum_v") * 2,
    b_latest_ts=col("b_latest_ts"),
    gap=col("v") - col("b_sum_v"),
)
TRANSFORMS: dict[str, Any] = {"none": None, "row": with_gap, "declarative": DECLARATIVE}
WINDOWS = {
    "continuous": lambda: Sliding(timedelta(seconds=4)),
    "tumbling": lambda: Tumbling(timedelta(seconds=3)),
}


def enriched_view(
    window: str, transform: str, exclusive: bool = False, looks_up: str = "stats"
) -> StreamFeatureView:
    lookup = Lookup(
        looks_up,
        features=["n", "sum_v", "latest_ts"],
        on={"user_id": "user_id"},
        prefix="b_",
        exclusive=exclusive,
    )
    return make_view(
        dict(ENRICHED_FEATURES),
        window=WINDOWS[window](),
        transform=TRANSFORMS[transform],
        name="enriched",
        joins=(lookup,),
    )


class HalfSum:
    """A model without weights: half the sum of its inputs (a Beam ``ModelHandler``, as MLFS's
    model stages take)."""

    def load_model(self) -> float:
        return 0.5

    def run_inference(self, batch: Any, model: float, inference_args: Any = None) -> Any:
        from apache_beam.ml.inference.base import PredictionResult

        return [PredictionResult(x, model * sum(x)) for x in batch]


def score_inputs(row: dict[str, Any]) -> list[float]:
    if row.get("b_n") is None:
        raise ValueError("nothing looked up for this event")  # a dead letter of the model stage
    return [float(row["b_n"]), float(row.get("b_sum_v") or 0.0), float(row.get("gap") or 0.0)]


def scored_view() -> StreamFeatureView:
    """A lookup, a row transform, then a model stage over the looked-up values, before the window."""
    from transforms.inference import Batching, Enrich, Model

    lookup = Lookup("stats", features=["n", "sum_v", "latest_ts"], on={"user_id": "user_id"}, prefix="b_")
    stage = Enrich(
        "half", Model("half", HalfSum()), inputs=score_inputs, outputs="score", batching=Batching(4)
    )
    features = {
        "n": (Int64, Count()),
        "score_sum": (Float64, Sum("score")),
        "score_max": (Float64, Max("score")),
    }
    return make_view(
        features,
        window=Sliding(timedelta(seconds=4)),
        transform=with_gap,
        name="scored",
        joins=(lookup,),
        enrich_events=stage,
    )


def lookups(view: StreamFeatureView, rows: Any) -> JoinInputs:
    return JoinInputs(lookups={view.name: LookupTable.of(view.plan, rows)})


def found_some(rows: list[dict[str, Any]]) -> None:
    """The case is not vacuous: some events found a looked-up row and some found none."""
    assert any(r["n_found"] for r in rows) and any(r["n"] > r["n_found"] for r in rows)


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
@pytest.mark.parametrize(
    ("seed", "typed_time", "exclusive"), [(1, False, False), (2, True, False), (3, True, True)]
)
def test_lookup_equals_reference_on_the_embedded_engine(
    tmp_path: Path, window: str, transform: str, seed: int, typed_time: bool, exclusive: bool
) -> None:
    stats, enriched = stats_view(), enriched_view(window, transform, exclusive)
    # The looked-up view has keys k0..k3, the enriched events k0..k5: keys on one side only.
    stats_path = write_events(tied_events(seed + 100, keys=4), tmp_path / "stats.parquet")
    path = write_events(tied_events(seed, keys=6), tmp_path / "events.parquet", typed_time)
    stats_rows = stats.run(read_history(stats_path)).rows
    expected = enriched.run(read_history(path), joins=lookups(stats, stats_rows))
    found_some(expected.rows)
    embedded_stats = stats.run(stats_path, Runner.EMBEDDED)
    got = enriched.run(path, Runner.EMBEDDED, joins=lookups(stats, embedded_stats.rows))
    assert_same_result(enriched, expected, got.rows, got.counts, got.dead_letters)


def test_a_model_stage_scores_the_looked_up_values_on_the_embedded_engine(tmp_path: Path) -> None:
    """Joins, then the transform and a model stage in batches: events that found nothing to look up
    fail the stage (dead letters), the others are scored."""
    stats, scored = stats_view(), scored_view()
    stats_path = write_events(tied_events(111, keys=4), tmp_path / "stats.parquet")
    path = write_events(tied_events(11, keys=6), tmp_path / "events.parquet")
    stats_rows = stats.run(read_history(stats_path)).rows
    expected = scored.run(read_history(path), joins=lookups(stats, stats_rows))
    assert any("nothing looked up" in letter.detail for letter in expected.dead_letters)
    assert any(row["score_sum"] for row in expected.rows)
    got = scored.run(path, Runner.EMBEDDED, joins=lookups(stats, stats.run(stats_path, Runner.EMBEDDED).rows))
    assert_same_result(scored, expected, got.rows, got.counts, got.dead_letters)


def test_inclusive_and_exclusive_lookups_differ_only_at_tied_times(tmp_path: Path) -> None:
    """A looked-up row at exactly the event's time is seen inclusively and not exclusively."""
    stats = stats_view()
    stats_path = write_events(tied_events(7, keys=4), tmp_path / "stats.parquet")
    path = write_events(tied_events(8, keys=4), tmp_path / "events.parquet")
    inputs = lookups(stats, stats.run(read_history(stats_path)).rows)
    rows = {
        exclusive: enriched_view("continuous", "none", exclusive).run(read_history(path), joins=inputs).rows
        for exclusive in (False, True)
    }
    assert len(rows[False]) == len(rows[True])
    assert rows[False] != rows[True]


def test_chained_lookups_equal_reference(tmp_path: Path) -> None:
    """A view looks up a view that looks up another: each engine runs the chain in order."""
    stats = stats_view()
    enriched = enriched_view("continuous", "row")
    chained = make_view(
        {"n": (Int64, Count()), "sum_found": (Int64, Sum("e_n_found"))},
        window=Sliding(timedelta(seconds=6)),
        name="chained",
        joins=(Lookup(enriched, features=["n_found"], on=["user_id"], prefix="e_"),),
    )
    paths = {
        name: write_events(tied_events(seed, keys=5), tmp_path / f"{name}.parquet")
        for name, seed in (("stats", 11), ("enriched", 12), ("chained", 13))
    }

    def run(runner: Runner) -> Any:
        def source(name: str) -> Any:
            return read_history(paths[name]) if runner is Runner.REFERENCE else paths[name]

        stats_rows = stats.run(source("stats"), runner).rows
        enriched_rows = enriched.run(source("enriched"), runner, joins=lookups(stats, stats_rows)).rows
        return chained.run(source("chained"), runner, joins=lookups(enriched, enriched_rows))

    expected = run(Runner.REFERENCE)
    assert any(r["sum_found"] for r in expected.rows)
    got = run(Runner.EMBEDDED)
    assert_same_result(chained, expected, got.rows, got.counts, got.dead_letters)


def test_lookup_keys_of_the_wrong_type_are_dead_letters_on_both_engines(tmp_path: Path) -> None:
    """JSON lines: a key that does not coerce to the looked-up key's type is a ``wrong_type`` dead
    letter naming the lookup; a null or missing one finds nothing."""
    stats = stats_view()
    stats_path = write_events(tied_events(21, keys=4), tmp_path / "stats.parquet")
    events = tied_events(22, keys=4)
    events[3]["user_id"] = 5
    events[4]["user_id"] = {"nested": True}
    del events[5]["user_id"]
    lines = [json.dumps(e).encode() for e in events]
    enriched = enriched_view("continuous", "row")
    stats_rows = stats.run(read_history(stats_path)).rows
    expected = enriched.run(lines, joins=lookups(stats, stats_rows))
    details = [d.detail for d in expected.dead_letters if d.reason == "wrong_type"]
    assert any(d.startswith("lookup of 'stats', field 'user_id'") for d in details), details
    table = pa.table({LINE: pa.array(lines, pa.binary())})
    got = enriched.run(table, Runner.EMBEDDED, joins=lookups(stats, stats_rows))
    assert_same_result(enriched, expected, got.rows, got.counts, got.dead_letters)


REFUNDS = FileStreamSource(name="refunds", path="refunds", history="refunds.parquet")
PAIRED_FEATURES = {
    "n": (Int64, Count()),
    "n_refunds": (Int64, Count("r_amount")),
    "refunded": (Float64, Sum("r_amount")),
    "last_refund": (UnixTimestamp, Latest("r_timestamp")),
    "max_v": (Float64, Max("v")),
}


def refund_check(event: dict[str, Any]) -> Any:
    """A Python transform over the joined event: one partner's reason makes the whole event fail."""
    if event.get("r_reason") == "boom":
        raise ValueError("refund boom")
    if event.get("kind") == "drop":
        return None
    return event


PAIRED_TRANSFORMS: dict[str, Any] = {
    "none": None,
    "row": refund_check,
    "declarative": Select(
        where=col("kind") != "drop",
        user_id=col("user_id"),
        r_amount=col("r_amount") * 2,
        r_timestamp=col("r_timestamp"),
        v=col("v"),
    ),
}


def payments(seed: int, mixed: bool = False) -> list[dict[str, Any]]:
    """Tied events with a payment reference: a few references (several partners each), nulls and,
    with ``mixed``, integer references (never equal to a string one) and floats (wrong type)."""
    rng = random.Random(seed)
    events = tied_events(seed, n=600, keys=5)
    for event in events:
        roll = rng.random()
        event["ref"] = None if roll < 0.05 else f"p{rng.randrange(12)}"
        if mixed and roll > 0.97:
            event["ref"] = rng.choice([3, 1.5])
    return events


def refunds(seed: int, mixed: bool = False) -> list[dict[str, Any]]:
    """Refund events: the same references, times on the same whole seconds (partners exactly at
    the bounds), nulls, bad times and, with ``mixed``, integer and float references."""
    rng = random.Random(seed)
    events = []
    for _ in range(300):
        stamp: str | None = (BASE + timedelta(seconds=rng.randrange(-3, 45))).isoformat()
        roll = rng.random()
        if roll < 0.02:
            stamp = "not a time"
        ref: Any = None if roll > 0.95 else f"p{rng.randrange(14)}"
        if mixed and 0.02 < roll < 0.06:
            ref = rng.choice([3, 2.5])
        events.append(
            {
                "ref": ref,
                "timestamp": stamp,
                "amount": rng.choice([None, 1.0, 2.5, 4.0] * 3 + [float("inf")]),  # inf: wrong_type
                "reason": rng.choice(["fraud", "return", "boom"] if mixed else ["fraud", "return"]),
            }
        )
    return events


def paired_view(
    how: str, transform: str, window: str = "continuous", lookup: bool = False, source: Any = REFUNDS
) -> StreamFeatureView:
    joins: list[Any] = [
        IntervalJoin(
            source,
            on={"ref": "ref"},
            within=(timedelta(seconds=2), timedelta(seconds=3)),
            how=how,
            fields=["amount", "reason"],
            prefix="r_",
        )
    ]
    features = dict(PAIRED_FEATURES)
    if lookup:
        joins.append(Lookup("stats", features=["n"], on={"user_id": "user_id"}, prefix="b_"))
        features["n_found"] = (Int64, Count("b_n"))
    return make_view(
        features,
        window=WINDOWS[window](),
        transform=PAIRED_TRANSFORMS[transform],
        name="paired",
        joins=tuple(joins),
    )


def as_lines(events: list[dict[str, Any]]) -> pa.Table:
    return pa.table({LINE: pa.array([json.dumps(e).encode() for e in events], pa.binary())})


def assert_same_joined(view: StreamFeatureView, expected: Any, got: Any) -> None:
    assert_same_result(view, expected, got.rows, got.counts, got.dead_letters)
    assert got.source_counts == expected.source_counts
    assert all(c.balanced for c in expected.source_counts.values())


def typed_times(events: list[dict[str, Any]]) -> pa.Table:
    """Events with a timestamp column (unparseable times null), as Parquet history holds them."""
    table = pa.Table.from_pylist(events)
    times = [
        None if t in (None, "not a time") else datetime.fromisoformat(t)
        for t in table.column("timestamp").to_pylist()
    ]
    return table.set_column(
        table.schema.get_field_index("timestamp"), "timestamp", pa.array(times, pa.timestamp("us", tz="UTC"))
    )


@pytest.mark.parametrize("typed_time", [False, True])
@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("transform", sorted(PAIRED_TRANSFORMS))
@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_interval_join_equals_reference_on_the_embedded_engine(
    how: str, transform: str, window: str, typed_time: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Typed times and a declarative transform take the joins over whole columns (only the events
    with a row it cannot prove clean go event by event); the rest goes event by event."""
    view = paired_view(how, transform, window)
    events = typed_times(payments(31)) if typed_time else pa.Table.from_pylist(payments(31))
    other = typed_times(refunds(32)) if typed_time else pa.Table.from_pylist(refunds(32))
    inputs = JoinInputs(sources={"refunds": other})
    expected = view.run(raw_events(events), joins=inputs)
    assert any(r["n_refunds"] > 1 for r in expected.rows)  # several partners
    assert any(r["n"] > r["n_refunds"] for r in expected.rows) or how == "inner"
    by_event: list[int] = []
    per_event = JoinedEventStage._by_event

    def counted(stage: JoinedEventStage, batch: pa.RecordBatch) -> pa.RecordBatch:
        by_event.append(batch.num_rows)
        return per_event(stage, batch)

    monkeypatch.setattr(JoinedEventStage, "_by_event", counted)
    got = view.run(events, Runner.EMBEDDED, joins=inputs)
    assert_same_joined(view, expected, got)
    whole_columns = typed_time and transform != "row"
    assert (sum(by_event) < events.num_rows / 2) == whole_columns, (sum(by_event), events.num_rows)


@pytest.mark.parametrize("how", ["inner", "left"])
def test_interval_join_of_messy_json_lines_then_a_lookup_equals_reference(tmp_path: Path, how: str) -> None:
    """Wrong-type references on either side (dead letters on their own source), integers that
    never equal strings, bad times, a partner's failure failing its whole event, then a lookup."""
    stats = stats_view()
    stats_path = write_events(tied_events(41, keys=4), tmp_path / "stats.parquet")
    view = paired_view(how, "row", lookup=True)
    generated = refunds(43, mixed=True)
    events, other = as_lines(payments(42, mixed=True)), as_lines(generated)
    expected_inputs = JoinInputs(
        lookups=lookups(stats, stats.run(read_history(stats_path)).rows).lookups, sources={"refunds": other}
    )
    expected = view.run(raw_events(events), joins=expected_inputs)
    reasons = {(d.source, d.reason) for d in expected.dead_letters}
    assert {("refunds", "wrong_type"), ("refunds", "bad_time"), (None, "wrong_type")} <= reasons, reasons
    assert any(d.detail == "ValueError: refund boom" for d in expected.dead_letters)
    without_value = sum(1 for r in generated if r["ref"] is None and r["timestamp"] != "not a time")
    assert expected.source_counts["refunds"].filtered == without_value > 0
    embedded_inputs = JoinInputs(
        lookups=lookups(stats, stats.run(stats_path, Runner.EMBEDDED).rows).lookups,
        sources={"refunds": other},
    )
    got = view.run(events, Runner.EMBEDDED, joins=embedded_inputs)
    assert_same_joined(view, expected, got)


def test_interval_join_pairs_at_the_bounds_and_times_the_joined_event() -> None:
    """The rule itself: partners at exactly ``a.t - before`` and ``a.t + after`` join, one beyond
    does not; the joined event's time is the later of the two; a left join's lonely event comes at
    ``a.t + after``."""
    at = BASE.isoformat()
    event = {"user_id": "u", "timestamp": at, "ref": "p", "v": 1.0, "kind": "keep"}
    partners = [
        {
            "ref": "p",
            "timestamp": (BASE + timedelta(seconds=s)).isoformat(),
            "amount": float(s),
            "reason": "x",
        }
        for s in (-3, -2, 3, 4)
    ]
    inputs = JoinInputs(sources={"refunds": pa.Table.from_pylist(partners)})
    rows = paired_view("inner", "none", window="continuous").run([event], joins=inputs).rows
    by_time = {r["event_timestamp"]: r["refunded"] for r in rows}
    assert by_time[BASE] == -2.0 and by_time[BASE + timedelta(seconds=3)] == 1.0
    lonely = paired_view("left", "none").run([{**event, "ref": "q"}], joins=inputs).rows
    assert lonely[0]["event_timestamp"] == BASE + timedelta(seconds=3) and lonely[0]["n_refunds"] == 0


@pytest.mark.slow
def test_spark_runs_lookups_and_interval_joins_as_the_reference(tmp_path: Path) -> None:
    """Spark runs the embedded engine's joined stage 1 in its tasks (the inputs written once by the
    driver): a chained lookup of typed-time events, and a messy interval join then a lookup."""
    stats = stats_view()
    stats_events = pa.Table.from_pylist(tied_events(51, keys=4))
    reference_stats = stats.run(raw_events(stats_events)).rows
    spark_engine = get_engine("spark")
    spark_stats = spark_engine.feature_table(stats.plan, stats_events)
    assert spark_stats is not None

    enriched = enriched_view("continuous", "declarative")
    events = typed_times(tied_events(52, keys=6))
    expected = enriched.run(raw_events(events), joins=lookups(stats, reference_stats))
    found_some(expected.rows)
    got = spark_engine.run_table(enriched.plan, events, lookups(stats, spark_stats))
    assert_same_result(enriched, expected, got.rows, got.counts, got.dead_letters)

    paired = paired_view("left", "row", lookup=True)
    events, other = as_lines(payments(53, mixed=True)), as_lines(refunds(54, mixed=True))
    inputs = JoinInputs(lookups=lookups(stats, reference_stats).lookups, sources={"refunds": other})
    expected = paired.run(raw_events(events), joins=inputs)
    got = spark_engine.run_table(paired.plan, events, inputs)
    assert_same_joined(paired, expected, got)


def join_cases() -> dict[
    str, tuple[StreamFeatureView, list[Any], StreamFeatureView, list[Any], dict[str, list[Any]]]
]:
    """Views with joins over raw events as a Beam pipeline creates them: (view, events, the view it
    looks up, that view's reference rows, the other sources' raw events)."""
    stats = stats_view()
    stats_rows = stats.run(raw_events(pa.Table.from_pylist(tied_events(61, keys=4)))).rows
    typed = typed_times(tied_events(62, keys=6))
    refunds_lines = raw_events(as_lines(refunds(64, mixed=True)))
    return {
        "lookup": (enriched_view("tumbling", "row"), raw_events(typed), stats, stats_rows, {}),
        "scored lookup": (scored_view(), raw_events(typed), stats, stats_rows, {}),
        "interval": (
            paired_view("left", "row", lookup=True),
            raw_events(as_lines(payments(63, mixed=True))),
            stats,
            stats_rows,
            {"refunds": refunds_lines},
        ),
    }


@pytest.mark.slow
def test_beam_runs_lookups_and_interval_joins_as_the_reference(tmp_path: Path) -> None:
    """Beam takes the looked-up rows and the other source's partners as side inputs."""
    out = tmp_path / "beam.pkl"
    job = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("beam_join_job.py")), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    got = pickle.loads(out.read_bytes())
    for name, (view, events, stats, stats_rows, sources) in join_cases().items():
        inputs = JoinInputs(
            lookups=lookups(stats, stats_rows).lookups,
            sources={s: pa.table({LINE: pa.array(raws, pa.binary())}) for s, raws in sources.items()},
        )
        expected = view.run(events, joins=inputs)
        (counts,) = got[f"{name}.counts"]
        assert_same_result(view, expected, got[f"{name}.rows"], counts, got[f"{name}.dead_letters"])
        assert dict(got.get(f"{name}.source_counts", [])) == expected.source_counts


SECONDS = st.integers(min_value=-4, max_value=12)
REFS = st.sampled_from(["p0", "p1", "p2", None, 1])
PAYMENT = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["k0", "k1", "k2", None]),
        "timestamp": st.one_of(SECONDS, st.just(None)),
        "ref": REFS,
        "v": st.sampled_from([None, 1.0, -2.5, 0.25]),
        "kind": st.sampled_from(["keep", "keep", "drop"]),
    }
)
REFUND = st.fixed_dictionaries(
    {
        "ref": REFS,
        "timestamp": st.one_of(SECONDS, st.just(None)),
        "amount": st.sampled_from([None, 1.0, 4.0, float("inf")]),
        "reason": st.sampled_from(["fraud", "boom"]),
    }
)


def _at(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generated seconds as ISO times (ties on whole seconds; None stays a missing time)."""
    return [
        {
            **e,
            "timestamp": None
            if e["timestamp"] is None
            else (BASE + timedelta(seconds=e["timestamp"])).isoformat(),
        }
        for e in events
    ]


def generated_table(events: list[dict[str, Any]], typed: bool) -> pa.Table:
    """Generated events as typed columns (the join values as text, one type per column) or as JSON
    lines (any value)."""
    if typed and events:
        return typed_times([{**e, "ref": None if e["ref"] is None else str(e["ref"])} for e in _at(events)])
    return as_lines(_at(events))


@settings(deadline=None, max_examples=40)
@given(
    payments_=st.lists(PAYMENT, max_size=25),
    refunds_=st.lists(REFUND, max_size=25),
    stats_events=st.lists(PAYMENT, max_size=15),
    how=st.sampled_from(["inner", "left"]),
    transform=st.sampled_from(sorted(PAIRED_TRANSFORMS)),
    typed=st.booleans(),
)
def test_generated_joins_equal_reference(
    payments_: list[dict[str, Any]],
    refunds_: list[dict[str, Any]],
    stats_events: list[dict[str, Any]],
    how: str,
    transform: str,
    typed: bool,
) -> None:
    """Hypothesis: any small inputs (ties, nulls, missing times, partners at and beyond the bounds,
    keys on one side only, integer and string join values, infinities) through an interval join
    then a lookup give the reference's rows, counts and dead letters on the embedded engine."""
    stats = stats_view()
    stats_rows = stats.run(_at(stats_events)).rows
    view = paired_view(how, transform, lookup=True)

    events, other = generated_table(payments_, typed), generated_table(refunds_, typed)
    inputs = JoinInputs(lookups=lookups(stats, stats_rows).lookups, sources={"refunds": other})
    expected = view.run(raw_events(events), joins=inputs)
    got = view.run(events, Runner.EMBEDDED, joins=inputs)
    assert_same_joined(view, expected, got)


@settings(deadline=None, max_examples=40)
@given(
    events_=st.lists(PAYMENT, max_size=30),
    stats_events=st.lists(PAYMENT, max_size=20),
    window=st.sampled_from(sorted(WINDOWS)),
    transform=st.sampled_from(sorted(TRANSFORMS)),
    exclusive=st.booleans(),
    typed=st.booleans(),
)
def test_generated_lookups_equal_reference(
    events_: list[dict[str, Any]],
    stats_events: list[dict[str, Any]],
    window: str,
    transform: str,
    exclusive: bool,
    typed: bool,
) -> None:
    """Hypothesis: lookups alone (the vectorised stage 1 after one ASOF join) on any small inputs."""
    stats = stats_view()
    stats_rows = stats.run(_at(stats_events)).rows
    view = enriched_view(window, transform, exclusive)
    events = generated_table(events_, typed)
    expected = view.run(raw_events(events), joins=lookups(stats, stats_rows))
    got = view.run(events, Runner.EMBEDDED, joins=lookups(stats, stats_rows))
    assert_same_result(view, expected, got.rows, got.counts, got.dead_letters)


def in_arrival_order(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Events by time (unparseable times anywhere) with local disorder: most within a lateness
    bound of 3 s, some beyond it (late)."""
    rng = random.Random(seed)

    def at(event: dict[str, Any]) -> float:
        stamp = event.get("timestamp")
        try:
            return datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else 0.0
        except ValueError:
            return rng.random() * 40

    return sorted(events, key=lambda e: at(e) + rng.choice([0, 0, 0, 1, 2, 5]))


@pytest.mark.slow
@pytest.mark.parametrize(("how", "transform"), [("inner", "declarative"), ("left", "row")])
def test_flink_interval_join_equals_reference(how: str, transform: str) -> None:
    """Flink's interval join finds the partners, the reference's joiner joins them: the same rows,
    counts (on both sources) and dead letters."""
    view = paired_view(how, transform)
    inputs = JoinInputs(sources={"refunds": pa.Table.from_pylist(refunds(32))})
    events = payments(31)
    expected = view.run(events, joins=inputs)
    assert any(r["n_refunds"] > 1 for r in expected.rows)
    assert_same_joined(view, expected, view.run(events, Runner.FLINK, joins=inputs))


@pytest.mark.slow
def test_flink_exclusive_lookup_equals_reference() -> None:
    """Flink's event-time temporal join over the looked-up rows, strictly before each event."""
    stats, enriched = stats_view(), enriched_view("continuous", "row", exclusive=True)
    inputs = lookups(stats, stats.run(tied_events(101, keys=4)).rows)
    events = tied_events(1, keys=6)
    expected = enriched.run(events, joins=inputs)
    found_some(expected.rows)
    got = enriched.run(events, Runner.FLINK, joins=inputs)
    assert_same_result(enriched, expected, got.rows, got.counts, got.dead_letters)


STREAMED_REFUNDS = FileStreamSource(  # a refunds source whose lateness the stream tests judge
    name="refunds",
    path="refunds",
    history="refunds.parquet",
    max_out_of_orderness=timedelta(seconds=1),
    allowed_lateness=timedelta(seconds=1),
)


@pytest.mark.slow
def test_flink_messy_interval_join_then_lookup_with_lateness_on_both_sides() -> None:
    """A stream replay: late events on either source are dead letters on their own source, the
    lookup after the interval join sees rows up to the joined event's time, and the counts balance
    per source."""
    from transforms.events import Lateness

    stats = stats_view()
    view = paired_view("left", "row", lookup=True, source=STREAMED_REFUNDS)
    events = [json.dumps(e).encode() for e in in_arrival_order(payments(42, mixed=True), 1)]
    other = as_lines(in_arrival_order(refunds(43, mixed=True), 2))
    inputs = JoinInputs(
        lookups=lookups(stats, stats.run(tied_events(41, keys=4)).rows).lookups, sources={"refunds": other}
    )
    lateness = Lateness(2000, 1000)
    expected = view.run(events, joins=inputs, lateness=lateness)
    assert expected.counts.late and expected.source_counts["refunds"].late  # late on both sides
    assert expected.counts.aggregated > expected.counts.late
    got = view.run(events, Runner.FLINK, joins=inputs, lateness=lateness)
    assert_same_joined(view, expected, got)


@pytest.mark.slow
def test_flink_joined_view_judges_both_sources_per_partition() -> None:
    """DESIGN §2 for a view with joins: its own events on three partitions and the other source's
    on two, each listed one partition after another (over one merged order most of the later
    partitions' events would be late), an interval join and a lookup; rows, counts on both
    sources and dead letters are the reference's given the same partitions."""
    from transforms.events import Lateness, PartitionedEvent

    stats = stats_view()
    view = paired_view("left", "row", lookup=True, source=STREAMED_REFUNDS)
    rng = random.Random(5)
    parts: list[list[bytes]] = [[], [], []]
    for event in in_arrival_order(payments(44, mixed=True), 3):
        parts[rng.randrange(3)].append(json.dumps(event).encode())
    events = [PartitionedEvent(p, line) for p, lines in enumerate(parts) for line in lines]
    other: list[list[dict[str, Any]]] = [[], []]
    for refund in in_arrival_order(refunds(45, mixed=True), 4):
        other[rng.randrange(2)].append(refund)
    stats_rows = lookups(stats, stats.run(tied_events(41, keys=4)).rows).lookups

    def inputs(partitioned: bool) -> JoinInputs:
        given = JoinInputs(lookups=stats_rows, sources={"refunds": as_lines(other[0] + other[1])})
        if partitioned:
            given.partitions["refunds"] = [0] * len(other[0]) + [1] * len(other[1])
        return given

    lateness = Lateness(2000, 1000)
    expected = view.run(events, joins=inputs(True), lateness=lateness)
    merged = view.run([e.raw for e in events], joins=inputs(False), lateness=lateness)
    assert 0 < expected.counts.late < merged.counts.late // 3
    assert 0 < expected.source_counts["refunds"].late < merged.source_counts["refunds"].late // 3
    got = view.run(events, Runner.FLINK, joins=inputs(True), lateness=lateness)
    assert_same_joined(view, expected, got)
