"""Stage 1 in the JVM for declarative views (``flink_decode``, ``JsonPrepare``): every event it
decides gets exactly the fields the Python ``prepare`` gives it, on tidy, tied, hostile and random
JSON; it decides the tidy ones; and in a job no clean event of a declarative view reaches Python."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pandas as pd
import pytest
from conformance import WINDOWS, assert_same_result, conformance_view, generate_events, tied_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.engines.flink_decode import DECIDED, jvm_spec
from transforms.engines.flink_stage1 import outcome_fields, prepare_function
from transforms.events import event_text
from transforms.plan import TransformPlan

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def jvm_prepare(plans: list[TransformPlan], texts: list[str]) -> list[list[Any]]:
    """``JsonPrepare``'s output rows for ``texts``, run in PyFlink's JVM outside a job."""
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    from transforms.engines.flink_jar import mlfs_jar

    spec = jvm_spec(plans)
    assert spec is not None
    gateway = get_gateway()
    add_jars_to_context_class_loader([mlfs_jar().as_uri()])
    j_texts = gateway.new_array(gateway.jvm.String, len(texts))
    for i, text in enumerate(texts):
        j_texts[i] = text
    rows: list[list[Any]] = json.loads(gateway.jvm.mlfs.flink.JsonPrepare.prepareAll(spec, j_texts))
    return rows


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and (a == b or (math.isnan(a) and math.isnan(b)))
    return bool(a == b)


def check_decided(plans: list[TransformPlan], texts: list[str]) -> int:
    """Every event ``JsonPrepare`` decides equals Python's ``prepare``; returns how many it decided."""
    python = prepare_function(plans)(pd.Series(texts, dtype=object))
    fields = outcome_fields(plans)
    decided = 0
    for i, row in enumerate(jvm_prepare(plans, texts)):
        assert row[1:3] == [i + 1, 0]  # _pos, _part
        if row[len(DECIDED) - 1]:  # left to Python
            continue
        decided += 1
        for name, got in zip(fields, row[len(DECIDED) :], strict=True):
            want = python[name].iloc[i]
            want = None if want is None or (not isinstance(want, str) and pd.isna(want)) else want
            if hasattr(want, "item"):
                want = want.item()
            assert (want is None and got is None) or _same(got, want), (texts[i], name, got, want)
    return decided


def lines(events: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(event) for event in events]


VIEW_SETS = {
    window: [conformance_view(window, "declarative").plan, conformance_view(window, "none").plan]
    for window in sorted(WINDOWS)
}


@pytest.mark.parametrize("window", sorted(VIEW_SETS))
def test_decided_events_equal_python_prepare(window: str) -> None:
    plans = VIEW_SETS[window]
    generated = lines(generate_events(3))
    decided = check_decided(plans, generated)
    # The generator's bad events (about 1 in 6: bad times, missing keys, infinities, wrong kinds)
    # go to Python; the rest are decided here.
    assert decided >= 0.75 * len(generated)
    tied = lines(tied_events(5))
    assert check_decided(plans, tied) >= 0.75 * len(tied)


def test_hostile_lines_go_to_python_or_equal_it() -> None:
    from test_hostile_events import hostile_lines

    texts = [event_text(line) for line in hostile_lines(random.Random(4), 600)]
    assert check_decided(VIEW_SETS["continuous"], texts) > 0


TIMES = [
    "2026-11-01T12:34:56.123456+00:00",
    "2026-11-01T12:34:56.1Z",
    "2026-11-01 12:34",
    "2026-11-01",
    "2026-11-01T12:34:56-05:30",
    "2026-11-01 12:34Z",
    "2026-11-01T00:00:00-00:00",
    "2026-11-01T12:34:56+0100",
    "2026-11-01T12:34:56.1234567",
    "2026-02-30T00:00:00",
    " 2026-11-01T00:00:00",
    "1969-12-31T23:59:59.999",
    "2026-11-01T23:59:60",
    "2026-11-01T12:34:56+24:00",
    "2026-11-01t12:34:56z",
    "2026-11-01T12:34:56.",
    "2026-11-01T12",
    "2026-11-01T12:34:",
    "2026-11-01T12:34+05:00",
    "2026-11-01T12:34:56.000001-23:59",
    "2026-11-01Z",
    "2026-11-01T12:34:56+05",
    "2026-11-01T12:34:56+05:3x",
    "2026-1-01T12:34:56",
    "2026-11-01T1a:34",
    "\u0662\u0660\u0662\u0666-11-01",
    "2026-11-01T12:34:56.123456789Z",
    "2026-11-01T12:34:56Z ",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 2**53, 2**53 + 1, -(2**63), 2**63 - 1, 1e11, 99999999999.5]),
    st.text(max_size=6),
    st.sampled_from(["a", "z", "drop", "split", "\U0001f600", "é"]),
)
# Typical values of each field (most events are decidable), and anything now and then.
TYPICAL = {
    "user_id": st.sampled_from(["k1", "k2", "é", "\U0001f600"]),
    "timestamp": st.one_of(st.sampled_from(TIMES), st.integers(0, 2 * 10**12), st.floats(0, 2e12)),
    "v": st.one_of(st.floats(-1e6, 1e6), st.integers(-(10**6), 10**6)),
    "i": st.integers(-(2**63), 2**63 - 1),
    "tag": st.text(max_size=4),
    "kind": st.sampled_from(["keep", "drop", "split"]),
    "other": st.just([1, {"x": None}]),
}


def _messy(draw: Any) -> str:
    event: dict[str, Any] = {}
    for name, typical in TYPICAL.items():
        roll = draw(st.integers(0, 9))
        if roll == 0:
            continue  # absent
        event[name] = draw(SCALARS if roll == 1 else typical)
    text = json.dumps(event, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 20)) == 0:
        text = text.replace("{", '{"v": 1, "v": 2.5, ', 1)  # a duplicate field
    return text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.composite(lambda draw: _messy(draw))(), min_size=1, max_size=60))
def test_random_json_decided_events_equal_python_prepare(texts: list[str]) -> None:
    check_decided(VIEW_SETS["hopping"], texts)


def test_messy_json_is_mostly_decided_in_the_jvm() -> None:
    # Events of the same kinds, drawn with a fixed seed: the decidable ones are decided here (the
    # test above exercises the decided path too, not only the hand-over to Python).
    rng = random.Random(6)
    texts = [_seeded_messy(rng) for _ in range(400)]
    # About 27% of these events are decidable (all six fields usable, by the pools' odds).
    assert check_decided(VIEW_SETS["continuous"], texts) >= 0.2 * len(texts)


def _seeded_messy(rng: random.Random) -> str:
    """A messy event as ``_messy`` makes them, from ``rng``."""
    pools: dict[str, list[Any]] = {  # mostly decidable values, then a few that are not
        "user_id": ["k1", "k2", "é", "\U0001f600"] * 3 + [None, 7, True],
        "timestamp": TIMES[:7] * 2
        + [0, 1_700_000_000, 1_700_000_000_123, 1_700_000_000.5]
        + TIMES[7:]
        + [-5, True],
        "v": [1.5, -2.25, 0, 7, 2**53 + 1, -0.0, None] * 2 + [1e308, "x", False],
        "i": [3, -4, 2**63 - 1, -(2**63), 0, None] * 2 + [2.5, "7"],
        "tag": ["", "a", "z", "\U0001f600é", None] * 2 + [1],
        "kind": ["keep", "drop", "split", None] * 2 + [3],
    }
    event = {name: rng.choice(values) for name, values in pools.items() if rng.random() > 0.1}
    return json.dumps(event, ensure_ascii=rng.random() < 0.5)


def test_views_the_jvm_does_not_decide_keep_a_python_stage_1() -> None:
    from conformance import FEATURES, split_and_drop
    from conftest import make_view

    from featurestore import Select, col, when
    from transforms.engines.flink_decode import stage1_groups

    sums = {"sum_v": FEATURES["sum_v"]}
    nan = Select(user_id=col("user_id"), v=when(col("v") > 0, float("nan")).otherwise(col("v")))
    huge = Select(user_id=col("user_id"), v=col("v") * 2**70)
    reads_time = Select(user_id=col("user_id"), v=col("timestamp"))
    plans = [make_view(sums, transform=t, name=f"v{i}").plan for i, t in enumerate([nan, huge, reads_time])]
    assert all(jvm_spec([plan]) is None for plan in plans)
    declarative = VIEW_SETS["tumbling"]
    row = make_view(sums, transform=split_and_drop).plan
    groups = stage1_groups([row, *declarative, plans[0]])
    assert [(members, spec is None, suffix) for members, spec, suffix in groups] == [
        ([1, 2], False, "_jvm"),
        ([0, 3], True, ""),
    ]
    # Without views for the JVM the job is built as before (one Python stage 1, named as before).
    assert stage1_groups([row]) == [([0], None, "")]


@pytest.mark.slow
def test_a_declarative_job_sends_only_undecided_events_to_python() -> None:
    from transforms.engines.flink import run_flink_views

    views = [conformance_view("continuous", "declarative"), conformance_view("tumbling", "none")]
    plan_text: list[str] = []
    events = generate_events(9, n=600)
    results = run_flink_views([v.plan for v in views], events, None, inspect=plan_text.append)
    for view, got in zip(views, results, strict=True):
        assert_same_result(view, view.run(events), got.rows, got.counts, got.dead_letters)
    nodes = {node["id"]: node for node in json.loads(plan_text[0])["nodes"]}

    def inputs(node_id: int) -> list[int]:
        return [p["id"] for p in nodes[node_id].get("predecessors", [])]

    # Everything each view's stage 2 (the continuous window operator, the tumbling aggregate) reads.
    upstream: set[int] = set()
    todo = [
        i for i, n in nodes.items() if n["type"].endswith("-window") or "GlobalWindowAggregate" in n["type"]
    ]
    assert len(todo) == 2
    while todo:
        for parent in inputs(todo.pop()):
            if parent not in upstream:
                upstream.add(parent)
                todo.append(parent)
    python = [nodes[i] for i in upstream if "Python" in nodes[i]["type"]]
    assert len(python) == 1 and "_prepare(_raw)" in python[0]["contents"]
    (feeding,) = [nodes[i] for i in inputs(python[0]["id"])]
    assert "where=[_py]" in feeding["contents"]  # only the events the JVM left undecided
