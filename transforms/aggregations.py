"""The aggregations, each defined once as a monoid: ``create / add / merge / result``.

Every engine either runs these directly (reference) or is checked against them (Spark, Flink, Beam).
Rules shared by all of them:

* nulls are skipped: ``Count("col")`` counts non-null values, ``Count()`` counts rows;
* an empty window gives ``0`` for ``Count``, ``CountDistinct`` and ``Sum``, null for the others;
* ``Latest``, ``First`` and ``LastK`` order values by ``(event time, value)``: ties in event time are
  broken by the value itself, so arrival order never decides;
* ``Variance`` / ``Stddev`` are population by default and sample with ``sample=True`` (null below
  two values); they are computed exactly (rational sums) and rounded once, so every engine is held
  to the true value, not to one summation order's rounding.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

from transforms.dtypes import Array, DType, Float64, String

Acc = Any


class Aggregation:
    """A monoid over the values of one input column of the transformed rows."""

    kind: ClassVar[str] = ""
    column: str | None
    # Whether values are ordered by ``order_key`` (event time, then value) rather than by value.
    by_time: ClassVar[bool] = False

    @staticmethod
    def order_key(ts: int, value: Any) -> tuple[int, Any]:
        """The order of a time-ordered aggregation's values: by event time, ties by the value itself
        (so arrival order never decides). Engines lower this one key."""
        return (ts, value)

    def input_dtype(self, output: DType) -> DType | None:
        """The type input values are coerced to, given the feature's type (None: only nullness)."""
        return output

    def check_output(self, output: DType) -> str | None:
        """Why ``output`` cannot be this aggregation's feature type, or None when it can."""
        return None

    def create(self) -> Acc:
        raise NotImplementedError

    def add(self, acc: Acc, value: Any, ts: int) -> Acc:
        raise NotImplementedError

    def merge(self, a: Acc, b: Acc) -> Acc:
        raise NotImplementedError

    def result(self, acc: Acc) -> Any:
        raise NotImplementedError

    def empty(self) -> Any:
        """The value over no input values (an empty window, or only nulls): 0 for counts and sums,
        null for the others. SQL aggregates give null there, so engines coalesce to this."""
        return self.result(self.create())

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "column": self.column}

    def describe(self) -> str:
        return f"{self.kind}({self.column or ''})"


def _scalar_check(agg: Aggregation, output: DType) -> str | None:
    if output.element is not None:
        return f"{agg.describe()} produces a scalar, not {output}"
    return None


@dataclass(frozen=True)
class Count(Aggregation):
    """Number of rows, or of non-null values of ``column``."""

    column: str | None = None
    kind: ClassVar[str] = "count"

    def input_dtype(self, output: DType) -> DType | None:
        return None

    def check_output(self, output: DType) -> str | None:
        return None if output.is_integer else f"{self.describe()} produces Int64, not {output}"

    def create(self) -> Acc:
        return 0

    def add(self, acc: Acc, value: Any, ts: int) -> Acc:
        return acc + 1

    def merge(self, a: Acc, b: Acc) -> Acc:
        return a + b

    def result(self, acc: Acc) -> Any:
        return acc


@dataclass(frozen=True)
class Sum(Aggregation):
    """Sum of ``column``; 0 for an empty window."""

    column: str
    kind: ClassVar[str] = "sum"

    def check_output(self, output: DType) -> str | None:
        return None if output.is_numeric else f"{self.describe()} needs a numeric type, not {output}"

    def create(self) -> Acc:
        return 0

    def add(self, acc: Acc, value: Any, ts: int) -> Acc:
        return acc + value

    def merge(self, a: Acc, b: Acc) -> Acc:
        return a + b

    def result(self, acc: Acc) -> Any:
        return acc


def _float_output(agg: Aggregation, output: DType) -> str | None:
    return None if output.is_float else f"{agg.describe()} produces Float64, not {output}"


@dataclass(frozen=True)
class Mean(Aggregation):
    """Arithmetic mean of ``column``; null for an empty window."""

    column: str
    kind: ClassVar[str] = "mean"

    def input_dtype(self, output: DType) -> DType | None:
        return Float64

    def check_output(self, output: DType) -> str | None:
        return _float_output(self, output)

    def create(self) -> Acc:
        return (0.0, 0)

    def add(self, acc: Acc, value: Any, ts: int) -> Acc:
        return (acc[0] + value, acc[1] + 1)

    def merge(self, a: Acc, b: Acc) -> Acc:
        return (a[0] + b[0], a[1] + b[1])

    def result(self, acc: Acc) -> Any:
        return acc[0] / acc[1] if acc[1] else None


class _Pick(Aggregation):
    """Keeps the largest (or, with ``largest = False``, smallest) value; with ``by_time`` the
    comparison is over ``(event time, value)``, so ties in time go to the value."""

    column: str
    largest: ClassVar[bool] = True

    def choose(self, a: Any, b: Any) -> Any:
        return max(a, b) if self.largest else min(a, b)

    def check_output(self, output: DType) -> str | None:
        return _scalar_check(self, output)

    def create(self) -> Acc:
        return None

    def add(self, acc: Acc, value: Any, ts: int) -> Acc:
        item = self.order_key(ts, value) if self.by_time else value
        return item if acc is None else self.choose(acc, item)

    def merge(self, a: Acc, b: Acc) -> Acc:
        return b if a is None else a if b is None else self.choose(a, b)

    def result(self, acc: Acc) -> Any:
        if acc is None:
            return None
        return acc[1] if self.by_time else acc


@dataclass(frozen=True)
class Min(_Pick):
    """Smallest value of ``column``."""

    column: str
    kind: ClassVar[str] = "min"
    largest = False


@dataclass(frozen=True)
class Max(_Pick):
    """Largest value of ``column``."""

    column: str
    kind: ClassVar[str] = "max"


@dataclass(frozen=True)
class Latest(_Pick):
    """Value of ``column`` at the latest event time (largest value among ties)."""

    column: str
    kind: ClassVar[str] = "latest"
    by_time = True


@dataclass(frozen=True)
class First(_Pick):
    """Value of ``column`` at the earliest event time (smallest value among ties)."""

    column: str
    kind: ClassVar[str] = "first"
    largest = False
    by_time = True


@dataclass(frozen=True)
class Variance(Aggregation):
    """Variance of ``column``: population by default, sample with ``sample=True``."""

    column: str
    sample: bool = False
    kind: ClassVar[str] = "variance"

    def input_dtype(self, output: DType) -> DType | None:
        return Float64

    def check_output(self, output: DType) -> str | None:
        return _float_output(self, output)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "sample": self.sample}

    def describe(self) -> str:
        return f"{self.kind}({self.column}{', sample=True' if self.sample else ''})"

    def create(self) -> Acc:
        return (0, Fraction(0), Fraction(0))  # count, exact sum, exact sum of squares

    def add(self, acc: Acc, value: Any, ts: int) -> Acc:
        n, total, squares = acc
        exact = Fraction(value)
        return (n + 1, total + exact, squares + exact * exact)

    def merge(self, a: Acc, b: Acc) -> Acc:
        return (a[0] + b[0], a[1] + b[1], a[2] + b[2])

    def _variance(self, acc: Acc) -> float | None:
        n, total, squares = acc
        if n == 0 or (self.sample and n < 2):
            return None
        return float((squares - total * total / n) / (n - 1 if self.sample else n))

    def result(self, acc: Acc) -> Any:
        return self._variance(acc)


@dataclass(frozen=True)
class Stddev(Variance):
    """Standard deviation of ``column``: population by default, sample with ``sample=True``."""

    kind: ClassVar[str] = "stddev"

    def result(self, acc: Acc) -> Any:
        var = self._variance(acc)
        return None if var is None else math.sqrt(var)


@dataclass(frozen=True)
class CountDistinct(Aggregation):
    """Number of distinct non-null values of ``column`` (exact); ``dtype`` is the column's type."""

    column: str
    dtype: DType = String
    kind: ClassVar[str] = "count_distinct"

    def input_dtype(self, output: DType) -> DType | None:
        return self.dtype

    def check_output(self, output: DType) -> str | None:
        return None if output.is_integer else f"{self.describe()} produces Int64, not {output}"

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "dtype": str(self.dtype)}

    def create(self) -> Acc:
        return frozenset()

    def add(self, acc: Acc, value: Any, ts: int) -> Acc:
        return acc | {value}

    def merge(self, a: Acc, b: Acc) -> Acc:
        return a | b

    def result(self, acc: Acc) -> Any:
        return len(acc)


@dataclass(frozen=True)
class LastK(Aggregation):
    """The ``k`` latest values of ``column``, newest first, ordered like ``Latest``."""

    column: str
    k: int = 10
    kind: ClassVar[str] = "last_k"
    by_time = True

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"LastK needs k >= 1, got {self.k!r}")

    def input_dtype(self, output: DType) -> DType | None:
        return output.element

    def check_output(self, output: DType) -> str | None:
        if output.element is None:
            return f"{self.describe()} produces an Array, not {output}"
        return None

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "k": self.k}

    def describe(self) -> str:
        return f"{self.kind}({self.column}, k={self.k})"

    def create(self) -> Acc:
        return ()

    def add(self, acc: Acc, value: Any, ts: int) -> Acc:
        return tuple(heapq.nlargest(self.k, (*acc, self.order_key(ts, value))))

    def merge(self, a: Acc, b: Acc) -> Acc:
        return tuple(heapq.nlargest(self.k, (*a, *b)))

    def result(self, acc: Acc) -> Any:
        return [value for _, value in acc] if acc else None


_KINDS: dict[str, type[Aggregation]] = {
    cls.kind: cls
    for cls in (Count, Sum, Mean, Min, Max, Latest, First, Variance, Stddev, CountDistinct, LastK)
}


def aggregation_from_spec(spec: dict[str, Any]) -> Aggregation:
    """Rebuild an aggregation from ``Aggregation.spec()`` (registry round trip)."""
    from transforms.dtypes import dtype_from_string

    args = {k: v for k, v in spec.items() if k != "kind"}
    if "dtype" in args:
        args["dtype"] = dtype_from_string(args["dtype"])
    if args.get("column") is None:
        args.pop("column", None)
    return _KINDS[spec["kind"]](**args)


__all__ = [
    "Aggregation",
    "Array",
    "Count",
    "CountDistinct",
    "First",
    "LastK",
    "Latest",
    "Max",
    "Mean",
    "Min",
    "Stddev",
    "Sum",
    "Variance",
    "aggregation_from_spec",
]
