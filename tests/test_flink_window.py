"""MLFS's window operator for continuous and lifetime windows on Flink (``flink_window``): the
reference's rows for hot keys with thousands of events in a window and many ties, for typed
inputs the conformance view does not hold, and a job plan without Flink's ``OVER`` aggregate."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
from conformance import BASE, FEATURES, arrival_order, conformance_view, tied_events, ties_per_key_and_time
from conftest import make_view
from test_flink_conformance import assert_same_flink, check_same

from transforms.aggregations import Count, CountDistinct, First, LastK, Latest, Max, Min, Sum
from transforms.dtypes import Array, Bool, Int32, Int64, String
from transforms.events import Lateness
from transforms.windows import Sliding

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]


def hot_key_events(seed: int, n: int) -> list[dict[str, Any]]:
    """``tied_events`` with one key holding most of them: about a thousand events in each 10 s
    window of the hot key, most of them tied with others at their second."""
    return tied_events(seed, n=n, keys=3)


@pytest.mark.parametrize("window", ["continuous", "lifetime"])
def test_hot_keys_through_the_window_operator_equal_reference(window: str) -> None:
    events = hot_key_events(21, 4000)
    assert ties_per_key_and_time(events) >= 50
    check_same(conformance_view(window, "none"), events, None)
    streamed = arrival_order(events, seed=21, jitter_ms=3000, late=25)
    got = check_same(conformance_view(window, "declarative"), streamed, Lateness(1000, 1000))
    assert got.counts.late >= 10


def test_typed_inputs_order_and_sum_as_the_reference() -> None:
    """Int32 sums, booleans' extremes, strings ordered by code point (Java's own order puts U+FFFF
    above U+10000), distinct counts of -0.0 and 0.0, ties of last_k by value."""
    features = {
        "sum32": (Int32, Sum("small")),
        "n": (Int64, Count()),
        "any_flag": (Bool, Max("flag")),
        "all_flag": (Bool, Min("flag")),
        "max_tag": (String, Max("tag")),
        "min_tag": (String, Min("tag")),
        "first_tag": (String, First("tag")),
        "latest_tag": (String, Latest("tag")),
        "last3_tag": (Array(String), LastK("tag", 3)),
        "distinct_x": (Int64, CountDistinct("x")),
    }
    view = make_view(features, window=Sliding(timedelta(seconds=4)), name="typed_window")
    rng = random.Random(5)
    tags = ["\uffff", "\U00010000", "\ue000", "a", "é", None]
    events = []
    for i in range(600):
        events.append(
            {
                "user_id": f"u{rng.randrange(3)}",
                "timestamp": (BASE + timedelta(milliseconds=250 * rng.randrange(60))).isoformat(),
                "small": rng.choice([40_000_000, -7, 7, None]),
                "flag": rng.choice([True, False, None]),
                "tag": rng.choice(tags),
                "x": rng.choice([0.0, -0.0, 1.5, None]),
                "seq": i,
            }
        )
    check_same(view, events, None)
    check_same(view, arrival_order(events, seed=5, jitter_ms=800, late=10), Lateness(500, 200))


def test_a_continuous_views_job_has_no_over_aggregate() -> None:
    """The job's plan: stage 2 of a continuous view is MLFS's window operator, not Flink's OVER
    (whose bounded RANGE frame revisits a key's rows at each new time)."""
    from transforms.engines.flink import run_flink_views

    plan_text: list[str] = []
    view = conformance_view("continuous", "none", {"n": FEATURES["n"]})
    events = hot_key_events(3, 200)
    got = run_flink_views([view.plan], events, None, inspect=plan_text.append)[0]
    assert_same_flink(view, view.run(events), got)
    nodes = json.loads(plan_text[0])["nodes"]
    assert [n for n in nodes if n["type"] == "prepared0-window"]
    # Stage 1's arrival order is an OVER by processing time; the window's would be a RANGE frame.
    overs = [n["contents"] for n in nodes if n["type"].startswith("OverAggregate")]
    assert overs and all("ROWS BETWEEN UNBOUNDED PRECEDING" in c and "RANG" not in c for c in overs)


def test_the_window_state_serializer_round_trips_and_copies_every_accumulator() -> None:
    """``KeyStateSerializer`` (the window's keyed state, without Kryo): a key's state with every
    accumulator kind and value type reads back as written, and a copy (what Flink makes of a state
    a running checkpoint still writes) is not changed by later changes of the original."""
    from pyflink.java_gateway import get_gateway

    from transforms.engines.flink import flink_environment

    flink_environment(1)  # MLFS's jar on the gateway's class path
    from py4j.java_gateway import get_field, set_field

    gateway = get_gateway()
    jvm = gateway.jvm
    mlfs, util = jvm.mlfs.flink, jvm.java.util

    def objects(*values: Any) -> Any:
        array = gateway.new_array(jvm.java.lang.Object, len(values))
        for i, value in enumerate(values):
            array[i] = value
        return array

    def entry(seq: int, time: int, *values: Any) -> Any:
        made = mlfs.ContinuousWindow.Entry()
        for name, value in (("seq", seq), ("time", time), ("values", objects(*values))):
            set_field(made, name, value)
        return made

    def fifo(*entries: Any) -> Any:
        made = mlfs.ContinuousWindow.Fifo()
        for item in entries:
            get_field(made, "items").add(item)
        return made

    # py4j passes a Python int as a Java Integer where it fits, else as a Long: times and sequence
    # numbers (Longs in the window) are given past 2**31.
    BIG, T = 2**32, 1_765_000_000_000
    raw = bytearray(b"\x00\xff\x10")
    counts = gateway.new_array(jvm.long, 2)
    counts[0], counts[1] = 7, -3
    exact = mlfs.ExactAcc()
    for name, value in (
        ("count", 4),
        ("nans", 1),
        ("sum", bytearray(b"\x01\x02")),
        ("squares", bytearray(b"\x03")),
    ):
        set_field(exact, name, value)
    deque = util.ArrayDeque()
    deque.add(objects(5 * BIG, "b"))
    deque.add(objects(9 * BIG, -0.0))
    distinct = util.HashMap()
    distinct.put("x", 2)
    key_bytes = mlfs.Aggregates.Bytes()
    set_field(key_bytes, "bytes", raw)
    distinct.put(key_bytes, 1)
    distinct.put(1.5, 3)
    state = mlfs.ContinuousWindow.KeyState()
    set_field(state, "keys", objects("user-é", 3))
    waiting = util.ArrayList()
    waiting.add(objects(None, True, 2.5, raw))
    get_field(state, "pending").put(T, waiting)
    window = fifo(
        entry(1, 900, "a" * 70_000, 4),
        entry(2, 950, jvm.java.time.LocalDate.of(2026, 12, 8), None),
    )
    set_field(window, "head", 1)  # the first entry has left the window
    set_field(state, "window", window)
    last = fifo(entry(3, 990, "z"))
    set_field(state, "accs", objects(counts, exact, deque, distinct, last))
    set_field(state, "nextSeq", 42)
    serializer = mlfs.KeyStateSerializer()

    def written(value: Any) -> bytes:
        out = jvm.org.apache.flink.core.memory.DataOutputSerializer(64)
        serializer.serialize(value, out)
        return bytes(out.getCopyOfBuffer())

    def read(data: bytes) -> Any:
        return serializer.deserialize(jvm.org.apache.flink.core.memory.DataInputDeserializer(bytearray(data)))

    first = written(state)
    back = read(first)
    assert written(back) == first
    kept = get_field(back, "window")
    assert get_field(kept, "items").size() == 1 and get_field(get_field(kept, "items").get(0), "seq") == 2
    assert get_field(back, "nextSeq") == 42
    accs = get_field(back, "accs")
    read_exact = [
        get_field(accs[1], name) for name in ("count", "nans", "positiveInfinities", "sum", "squares")
    ]
    assert read_exact == [4, 1, 0, b"\x01\x02", b"\x03"] and list(accs[0]) == [7, -3]
    assert (
        get_field(back, "keys")[0] == "user-é"
        and accs[3].get(key_bytes) == 1
        and accs[2].peekLast()[1] == -0.0
    )
    assert get_field(back, "pending").get(T).get(0)[3] == bytes(raw)
    copy = serializer.copy(state)
    assert written(copy) == first
    waiting.add(objects(BIG))  # the job goes on changing the original
    get_field(window, "items").add(entry(4, 1000, "c", None))
    counts[0] = 8
    deque.pollFirst()
    distinct.remove("x")
    get_field(last, "items").add(entry(5, 1000, "y"))
    set_field(exact, "count", 5)
    assert written(state) != first
    assert written(copy) == first
    assert serializer.snapshotConfiguration().restoreSerializer() == serializer
