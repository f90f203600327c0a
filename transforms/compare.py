"""Comparing two engines' feature rows: the rule conformance tests and ``mlfs verify`` share.

Rows match by key and feature time; integers, strings and times must be equal, floats equal
within 1e-9 relative (or absolute, near zero), lists element by element.
"""

from __future__ import annotations

import math
from typing import Any

from transforms.plan import EVENT_TIMESTAMP, TransformPlan

REL_TOL = 1e-9


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=REL_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


def diff_rows(
    plan: TransformPlan, expected: list[dict[str, Any]], got: list[dict[str, Any]], limit: int = 20
) -> list[str]:
    """Readable differences between two row sets (empty when they match), at most ``limit``."""
    identity = [*plan.key_names, EVENT_TIMESTAMP]
    problems: list[str] = []

    def index(rows: list[dict[str, Any]], side: str) -> dict[tuple[Any, ...], dict[str, Any]]:
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in rows:
            ident = tuple(row[k] for k in identity)
            if ident in out:
                problems.append(f"{side} has two rows for {_describe(ident)}")
            out[ident] = row
        return out

    want, have = index(expected, "expected"), index(got, "got")
    for ident in sorted(set(want) - set(have), key=repr):
        problems.append(f"missing row {_describe(ident)}")
    for ident in sorted(set(have) - set(want), key=repr):
        problems.append(f"unexpected row {_describe(ident)}")
    for ident in sorted(set(want) & set(have), key=repr):
        for name, _ in plan.output_features:
            a, b = want[ident][name], have[ident][name]
            if not same_value(a, b):
                problems.append(f"{_describe(ident)} {name}: expected {a!r}, got {b!r}")
    if len(problems) > limit:
        return [*problems[:limit], f"... and {len(problems) - limit} more"]
    return problems


def _describe(ident: tuple[Any, ...]) -> str:
    *key, when = ident
    stamp = when.isoformat() if hasattr(when, "isoformat") else str(when)
    return f"{'/'.join(map(str, key))} @ {stamp}"
