"""Whatever one event holds (deep nesting, bytes that are not UTF-8, huge numbers and strings,
NaN and infinities, wrong JSON types, odd times), the per-event stage gives it one outcome (rows,
filtered, or a dead letter with a reason) and never raises: a bad event must never stop a job."""

from __future__ import annotations

import json
import random
from typing import Any

import pandas as pd
import pytest
from conformance import conformance_view
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.engines.flink_stage1 import DEAD, FILTERED, OK, prepare_function
from transforms.events import (
    BAD_TIME,
    MAX_JSON_DEPTH,
    NOT_UTF8,
    UNPARSEABLE,
    WRONG_TYPE,
    DeadLetter,
    EventPreparer,
    PreparedEvent,
    event_text,
    parse_json,
)

STAMP = "2026-03-01T00:00:01+00:00"
GOOD = {"user_id": "k1", "timestamp": STAMP, "v": 1.5, "i": 2, "tag": "a", "kind": "keep"}


def line(**changes: Any) -> str:
    return json.dumps({**GOOD, **changes})


def hostile_lines(rng: random.Random, n: int) -> list[bytes]:
    """``n`` lines of an operator's fuzz file: about 40 kinds of hostile input, and good events."""
    deep = "[" * 100_000 + "]" * 100_000
    kinds: list[Any] = [
        lambda: '{"timestamp": "' + STAMP + '", "x": ' + deep + "}",
        lambda: '{"user_id": "k1", "timestamp": "' + STAMP + '", "v": ' + "[" * (MAX_JSON_DEPTH + 1),
        lambda: line(v=[[[[1]]]]),
        lambda: line(v="Infinity").replace('"Infinity"', "Infinity"),
        lambda: line(v="-Infinity").replace('"-Infinity"', "-Infinity"),
        lambda: line(v="NaN").replace('"NaN"', "NaN"),
        lambda: line(v=10**400),
        lambda: line(i=10**30),
        lambda: line(v=1e308 * 10),
        lambda: line(v="1.5"),
        lambda: line(v=True),
        lambda: line(tag=12),
        lambda: line(tag="x" * 200_000),
        lambda: line(user_id=None),
        lambda: line(user_id=["k1"]),
        lambda: line(user_id={"k": 1}),
        lambda: line(user_id=""),
        lambda: line(timestamp="0001-01-01T00:00:00Z"),
        lambda: line(timestamp="9999-12-31T23:59:59Z"),
        lambda: line(timestamp="10000-01-01"),
        lambda: line(timestamp=-1),
        lambda: line(timestamp=2**63),
        lambda: line(timestamp=1e300),
        lambda: line(timestamp="NaN"),
        lambda: line(timestamp=""),
        lambda: line(timestamp=None),
        lambda: line(timestamp=[STAMP]),
        lambda: line(timestamp="2026-13-45T99:00:00"),
        lambda: line(kind="boom"),
        lambda: line(kind="wrong"),
        lambda: line(kind=["split"]),
        lambda: "",
        lambda: "   ",
        lambda: "null",
        lambda: "[]",
        lambda: '"just text"',
        lambda: '{"user_id": "k1", "timestamp": ',
        lambda: "\x00" + line(),
        lambda: NOT_UTF8 + line(),
        lambda: line(user_id="k\ufffd1"),
    ]
    lines: list[bytes] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.5:
            lines.append(line(user_id=f"k{rng.randrange(4)}", v=rng.choice([1.0, 2.5, None])).encode())
        elif roll < 0.55:  # not UTF-8
            good = line(user_id=f"k{rng.randrange(4)}").encode()
            cut = rng.randrange(len(good))
            lines.append(good[:cut] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80"]) + good[cut:])
        else:
            lines.append(rng.choice(kinds)().encode("utf-8", "surrogatepass"))
    return lines


def test_parse_json_has_one_fixed_depth_and_refuses_bytes_that_are_not_utf8() -> None:
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    brackets_in_text = json.dumps({"s": "[" * 1000})
    assert parse_json(brackets_in_text) == {"s": "[" * 1000}
    for text, detail in [
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested deeper than 64 levels"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),  # Python's own limit would raise
        (b'{"a": "\xff"}', "not valid UTF-8"),
        (event_text(b'{"a": "\xff"}'), "not valid UTF-8"),
        ("{", "not JSON"),
    ]:
        with pytest.raises(ValueError, match=detail):
            parse_json(text)
    assert event_text('{"a": "é"}'.encode()) == '{"a": "é"}'


@pytest.mark.parametrize("transform", ["row", "declarative", "none"])
def test_every_hostile_line_gets_one_outcome_with_a_reason(transform: str) -> None:
    plan = conformance_view("continuous", transform).plan
    lines = hostile_lines(random.Random(3), 600)
    preparer = EventPreparer(plan)
    outcomes = [preparer.prepare(raw) for raw in lines]
    letters = [o for o in outcomes if isinstance(o, DeadLetter)]
    reasons = {d.reason for d in letters}
    assert {UNPARSEABLE, BAD_TIME, WRONG_TYPE} <= reasons
    for detail in ("nested deeper", "must be finite", "not valid UTF-8", "time out of range"):
        assert any(detail in d.detail for d in letters), detail
    for raw, outcome in zip(lines, outcomes, strict=True):
        assert outcome is None or isinstance(outcome, (PreparedEvent, DeadLetter))
        text = raw.decode("utf-8", "replace")
        if "Infinity" in text and '"v"' in text and isinstance(outcome, DeadLetter):
            assert outcome.reason in (WRONG_TYPE, UNPARSEABLE, BAD_TIME)
        if not raw.decode("utf-8", "replace").isascii() and b"\xff" in raw:
            assert isinstance(outcome, DeadLetter) and outcome.reason == UNPARSEABLE
            assert outcome.detail == "not valid UTF-8" and outcome.raw == text
    # Stage 1's batch function on Flink gives each line the same outcome, as marked text.
    texts = pd.Series([event_text(raw) for raw in lines], dtype="object")
    batch = prepare_function([plan])(texts)
    kinds = {None: FILTERED, PreparedEvent: OK, DeadLetter: DEAD}
    assert batch["_k0"].tolist() == [kinds[type(o) if o is not None else None] for o in outcomes]
    assert [DeadLetter.from_json(t) for t in batch["_l0"] if t is not None] == letters


def test_an_infinity_never_reaches_a_sum() -> None:
    plan = conformance_view("continuous", "none").plan
    outcome = EventPreparer(plan).prepare(line(v="x").replace('"x"', "Infinity"))
    assert isinstance(outcome, DeadLetter) and outcome.reason == WRONG_TYPE
    assert "must be finite" in outcome.detail
    nan = EventPreparer(plan).prepare(line(v="x").replace('"x"', "NaN"))
    assert isinstance(nan, PreparedEvent)  # NaN is null


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
FIELDS = st.sampled_from(["user_id", "timestamp", "v", "i", "tag", "kind", "other"])
EVENT_VALUES = st.dictionaries(FIELDS, JSON | st.sampled_from(["k1", STAMP, "keep", "split", "drop"]))


@settings(deadline=None, max_examples=300)
@given(
    raws=st.lists(
        EVENT_VALUES.map(lambda e: json.dumps(e).encode())
        | JSON.map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=40)
        | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
        min_size=1,
        max_size=20,
    ),
    transform=st.sampled_from(["row", "declarative", "none"]),
)
def test_the_per_event_stage_never_raises(raws: list[bytes], transform: str) -> None:
    """Any JSON value, any bytes: each event becomes rows, filtered or a dead letter, on the row
    path and in stage 1's batch function, which agree."""
    plan = conformance_view("hopping", transform).plan
    outcomes = [EventPreparer(plan).prepare(raw) for raw in raws]
    assert all(o is None or isinstance(o, (PreparedEvent, DeadLetter)) for o in outcomes)
    texts = pd.Series([event_text(raw) for raw in raws], dtype="object")
    batch = prepare_function([plan])(texts)
    assert len(batch) == len(raws)
    letters = [o for o in outcomes if isinstance(o, DeadLetter)]
    assert [DeadLetter.from_json(t) for t in batch["_l0"] if t is not None] == letters


@pytest.mark.parametrize("transform", ["none", "declarative", "row"])
def test_a_source_declares_the_event_times_its_views_accept(transform: str) -> None:
    # By default 1970 to 9999; a source of this century only refuses a 1999 event, and a source of
    # historical data accepts 1900. The row path and stage 1's Arrow path agree.
    from datetime import UTC, datetime

    from conformance import FEATURES, TRANSFORMS, WINDOWS
    from conftest import make_view

    from featurestore import FileStreamSource

    events = [line(timestamp=t) for t in ("1900-06-01T00:00:00Z", "1999-12-31T23:59:59Z", STAMP)]
    for first, accepted in [
        (None, [False, True, True]),
        (datetime(2000, 1, 1, tzinfo=UTC), [False, False, True]),
        (datetime(1800, 1, 1, tzinfo=UTC), [True, True, True]),
    ]:
        source = FileStreamSource(
            name="events",
            path="stream",
            history="history.parquet",
            event_time_range=None if first is None else (first, datetime(2100, 1, 1, tzinfo=UTC)),
        )
        view = make_view(dict(FEATURES), WINDOWS["continuous"](), TRANSFORMS[transform], "ranged", source)
        outcomes = [EventPreparer(view.plan).prepare(e) for e in events]
        assert [isinstance(o, PreparedEvent) for o in outcomes] == accepted
        assert all(o.reason == BAD_TIME for o in outcomes if isinstance(o, DeadLetter))
        assert ("event_time_range_ms" in view.plan.spec()) == (first is not None)
        texts = pd.Series(events, dtype="object")
        assert prepare_function([view.plan])(texts).to_dict("list") == prepare_function(
            [view.plan], vectorised=False
        )(texts).to_dict("list")
