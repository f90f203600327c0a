"""The Flink compilation's pure parts: order-preserving encodings, intervals, the SQL it writes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from conformance import conformance_view
from hypothesis import given
from hypothesis import strategies as st

from transforms.dtypes import Bool, DType, Float64, Int64, String, UnixTimestamp
from transforms.engines.flink_sql import decode_ordered, encode_ordered, interval, stage2_sql

VALUES: dict[str, tuple[DType, st.SearchStrategy[Any]]] = {
    "int": (Int64, st.integers(-(2**63), 2**63 - 1)),
    "float": (Float64, st.floats(allow_nan=False)),
    "string": (String, st.text()),
    "bool": (Bool, st.booleans()),
    "timestamp": (UnixTimestamp, st.integers(0, 2**45)),
}
TIMES = st.integers(-(2**40), 2**45)


@pytest.mark.parametrize("kind", sorted(VALUES))
@given(data=st.data())
def test_encoding_orders_like_the_monoids_and_round_trips(kind: str, data: st.DataObject) -> None:
    dtype, values = VALUES[kind]
    a = (data.draw(TIMES), data.draw(values))
    b = (data.draw(st.sampled_from([a[0], data.draw(TIMES)])), data.draw(values))
    ea, eb = encode_ordered(*a, dtype), encode_ordered(*b, dtype)
    assert decode_ordered(ea, dtype) == a
    if a < b:
        assert ea < eb
    elif b < a:
        assert eb < ea
    assert "," not in ea  # LISTAGG separates encodings with commas


def test_intervals() -> None:
    assert interval(1) == "INTERVAL '0 00:00:00.001' DAY(3) TO SECOND(3)"
    assert interval(int(timedelta(days=7, hours=1, seconds=2).total_seconds() * 1000) + 5) == (
        "INTERVAL '7 01:00:02.005' DAY(3) TO SECOND(3)"
    )
    with pytest.raises(ValueError, match="at most 999"):
        interval(1000 * 86_400_000)


def test_stage2_sql_shapes() -> None:
    continuous = stage2_sql(conformance_view("continuous").plan)
    assert (
        "RANGE BETWEEN INTERVAL '0 00:00:09.999' DAY(3) TO SECOND(3) PRECEDING AND CURRENT ROW" in continuous
    )
    assert "MAX(`_o" in continuous and "LISTAGG(`_o" in continuous and "COUNT(DISTINCT `_v" in continuous
    assert "UNBOUNDED PRECEDING" in stage2_sql(conformance_view("lifetime").plan)
    hopping = stage2_sql(conformance_view("hopping").plan)
    assert "TABLE(HOP(TABLE `prepared`, DESCRIPTOR(rt)" in hopping
    assert "HAVING MAX(rt) >= window_end - INTERVAL '0 00:00:02.000'" in hopping
