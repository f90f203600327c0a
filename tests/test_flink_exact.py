"""MLFS's exact Flink aggregates (``transforms/engines/flink_exact.py``): sums, means and variances
of doubles rounded once from exact values, so a continuous window that retracts a large value does
not drift, and a variance of large, close values does not cancel to nonsense."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from conformance import FLOAT_FEATURES, WINDOWS, assert_same_rows, cancelling_events
from conftest import make_view

from featurestore import Runner

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]


def hard_value(rng: random.Random) -> float:
    """Doubles that cancel, overflow partial sums, or sit near zero."""
    kind = rng.random()
    if kind < 0.25:
        return rng.choice([1e17, -1e17, 3.3e15, -2.2e16, 1e300, -1e300, 1.7e308])
    if kind < 0.35:
        return rng.choice([5e-324, -5e-324, 2.5e-310, 1e-300])
    if kind < 0.5:
        return 1e9 + rng.randrange(-5, 5) / 8  # large and close: a variance the sum of squares loses
    return rng.uniform(-2, 2)


def rounded(value: Fraction) -> float:
    try:
        return float(value)  # int / int: correctly rounded
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def expected(values: list[float]) -> tuple[float, float, float | None, float | None]:
    n = len(values)
    total = sum((Fraction(v) for v in values), Fraction(0))
    squares = sum((Fraction(v) ** 2 for v in values), Fraction(0))
    spread = n * squares - total * total
    return (
        rounded(total),
        rounded(total / n),
        rounded(spread / (n * n)),
        rounded(spread / (n * (n - 1))) if n > 1 else None,
    )


def test_exact_functions_round_the_exact_result_once() -> None:
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from transforms.engines.flink_exact import register_functions
    from transforms.engines.flink_jar import mlfs_jar

    rng = random.Random(11)
    groups = {g: [hard_value(rng) for _ in range(rng.randrange(1, 12))] for g in range(150)}
    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    t_env.get_config().set("pipeline.jars", mlfs_jar().as_uri())
    register_functions(t_env)
    rows = [(g, v) for g, values in groups.items() for v in values] + [(999, None)]
    t_env.create_temporary_view("t", t_env.from_elements(rows, ["g", "v"]))
    query = (
        "SELECT g, mlfs_sum(v), mlfs_mean(v), mlfs_var_pop(v), mlfs_var_samp(v), "
        "SUM(v), VAR_POP(v) FROM t GROUP BY g"
    )
    got = {row[0]: tuple(row[1:]) for row in t_env.execute_sql(query).collect()}
    assert got.pop(999)[:4] == (None, None, None, None)  # only nulls: no value
    flink_wrong = 0
    for g, values in groups.items():
        exact_sum, mean, var_pop, var_samp = expected(values)
        have = got[g]
        if math.isinf(exact_sum):  # an infinite sum leaves the mean and variances infinite too
            assert have[0] == exact_sum, (values, have)
            continue
        assert have[:4] == (exact_sum, mean, var_pop, var_samp), (values, have)
        flink_wrong += have[4] != exact_sum or (have[5] != var_pop and len(values) > 1)
    assert flink_wrong > 10  # Flink's own SUM and VAR_POP on the same groups: why these exist


@pytest.mark.parametrize("window", ["continuous", "hopping", "lifetime"])
def test_float_aggregates_that_cancel_equal_reference(window: str) -> None:
    # Large values enter and leave the windows beside small ones (Flink's own SUM gave 0.0 and
    # negative variances here), and values near 1e9 differ in their last bits.
    view = make_view(FLOAT_FEATURES, window=WINDOWS[window](), name=f"cancel_{window}")
    events = cancelling_events(3)
    expected_rows = view.run(events).rows
    assert any(row["sum_v"] not in (0.0, None) and abs(row["sum_v"]) < 10 for row in expected_rows)
    assert_same_rows(view, expected_rows, view.run(events, Runner.FLINK).rows)


def test_an_empty_java_home_does_not_stop_flink(tmp_path: Path) -> None:
    # PyFlink alone fails with "No such file or directory: 'bin/java'" when JAVA_HOME is "".
    script = "from transforms.engines.flink import flink_environment; flink_environment(1); print('ok')"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLINK_")}
    env["JAVA_HOME"] = ""
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_without_a_jdk_the_jar_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transforms.engines.flink_jar import CACHE_ENV, mlfs_jar
    from transforms.errors import MLFSError

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(MLFSError, match="install a JDK 17"):
        mlfs_jar()
    assert list(tmp_path.iterdir()) == []
