"""`mlfs init / plan / apply / registry` on a real repository, and errors as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import AS_OF

from featurestore.cli import main

MLFS = str(Path(sys.executable).with_name("mlfs"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert main(["init", str(path), "--as-of", AS_OF.isoformat(), "--events", "500"]) == 0
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_plan_apply_and_lookups(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code, out, _ = run(capsys, "plan", "--repo", str(repo))
    assert code == 0
    assert "+ view user_payment_stats_7d" in out and "+ entity user" in out
    assert "+ source payments" in out

    code, out, _ = run(capsys, "apply", "--repo", str(repo))
    assert code == 0 and "Applied 3 view(s)" in out
    code, out, _ = run(capsys, "plan", "--repo", str(repo))
    assert "No changes." in out and "- " not in out

    code, out, _ = run(capsys, "registry", "list", "--repo", str(repo))
    lines = out.splitlines()
    assert lines[0].split() == ["VIEW", "ENTITIES", "WINDOW", "FEATURES", "SOURCE", "OWNER", "VERSION"]
    assert any(line.split()[:4] == ["merchant_amount_1h", "merchant", "tumbling", "1h"] for line in lines)
    assert any(line.split()[:4] == ["user_payment_stats_7d", "user", "sliding", "7d"] for line in lines)
    assert any(line.split()[:3] == ["user_last_payment_fail", "user", "lifetime"] for line in lines)

    code, out, _ = run(capsys, "registry", "show", "user_payment_stats_7d", "--repo", str(repo))
    assert "window:      sliding 7d" in out
    assert "transform:   Select(user_id=user_id, amount=amount, failed=when((status == 'failed'), 1)" in out
    assert "amount_sum_7d" in out and "sum(amount)" in out and "count()" in out

    code, out, _ = run(capsys, "registry", "show", "user_last_payment_fail", "--json", "--repo", str(repo))
    spec = json.loads(out)["definition"]
    assert spec["plan"]["window"] == {"kind": "lifetime"}
    assert spec["owner"] == "risk@example.com" and spec["tags"] == {"team": "risk"}
    assert spec["plan"]["event_transform"]["ref"] == "features:extract_payment_fail_data"

    code, _, err = run(capsys, "registry", "show", "user_payment_stats", "--repo", str(repo))
    assert code == 1 and "did you mean user_payment_stats_7d" in err


def test_plan_shows_what_changed(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", "--repo", str(repo)]) == 0
    features = repo / "features.py"
    features.write_text(features.read_text().replace("timedelta(days=7)", "timedelta(days=14)"))
    capsys.readouterr()
    _, out, _ = run(capsys, "plan", "--repo", str(repo))
    assert "~ view user_payment_stats_7d (changed: function.source_sha256, plan.window.size_ms)" in out
    assert "= view merchant_amount_1h" in out


BROKEN = {
    "unknown field": (
        'fail_count_7d=Sum("failed"),',
        'fail_count_7d=Sum("failed"), refunds_7d=Count(),',
        "features.py: view 'user_payment_stats_7d': unknown field 'refunds_7d'",
    ),
    "wrong window": (
        "window=Sliding(size=timedelta(days=7)),",
        "window=Sliding(size=timedelta(days=7), hop=timedelta(days=2)),",
        "features.py: view 'user_payment_stats_7d': calling the view function to capture its "
        "definition failed: ValueError: window size 7 days, 0:00:00 is not a multiple of its hop",
    ),
    "two join keys": (
        'merchant = Entity(name="merchant", join_keys=["merchant_id"],',
        'merchant = Entity(name="merchant", join_keys=["merchant_id", "user_id"],',
        "features.py: entity 'merchant' has join keys 'merchant_id', 'user_id': an entity has "
        "exactly one join key; declare one entity per key and list them all in the view's "
        "entities=[...] for a compound key",
    ),
    "missing entity": (
        "    entities=[merchant],",
        '    entities=[Entity(name="shop", join_keys=["merchant_id"])],',
        "features.py: view 'merchant_amount_1h': missing entity 'shop'",
    ),
}


def test_apply_rejects_duplicate_view_names(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "more_features.py").write_text(
        "from features import *\n"
        "from features import payments, user, payment_amounts\n"
        "from datetime import timedelta\n"
        "@stream_feature_view(entities=[user], schema=[Field('user_id', String), "
        "Field('n', Int64)], source=payments, name='user_payment_stats_7d')\n"
        "def again(ctx, inputs):\n"
        "    return UnifiedTransformer(ctx, aggregator=Aggregations(n=Count())).run(inputs)\n"
    )
    code, _, err = run(capsys, "apply", "--repo", str(repo))
    assert code == 1
    assert "more_features.py: view 'user_payment_stats_7d': duplicate view name" in err
    assert "(also defined in features.py)" in err
    assert not (repo / "data" / "registry.db").exists()


def test_import_errors_name_file_and_line(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "typo.py").write_text("x = 1\ny = undefined_name\n")
    code, _, err = run(capsys, "plan", "--repo", str(repo))
    assert code == 1
    assert "typo.py: importing failed (line 2): NameError" in err


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["backfill", "--start", "last tuesday"],
        ["init"],
        ["apply", "--repo", "/nonexistent/repo"],
        ["registry", "show"],
    ],
)
def test_bad_arguments_print_one_line(args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [MLFS, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MLFS_DEBUG": ""},
        timeout=120,
    )
    assert proc.returncode in (1, 2)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("mlfs")


def test_repository_file_shadowing_an_installed_module_is_refused(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "json.py").write_text("x = 1\n")
    code, _, err = run(capsys, "plan", "--repo", str(repo))
    assert code == 1
    assert "json.py: module name 'json' is already taken by" in err
    import json as stdlib_json

    assert hasattr(stdlib_json, "dumps")  # the real module was left alone


def test_kafka_source_is_declared_and_registered(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "kafka_features.py").write_text(
        "from datetime import timedelta\n"
        "from featurestore import *\n"
        "from features import user\n"
        "clicks = KafkaStreamSource(name='clicks', bootstrap_servers='${KAFKA_BROKERS}',\n"
        "    topic='clicks', history='data/history/clicks.parquet',\n"
        "    max_out_of_orderness=timedelta(seconds=2), allowed_lateness=timedelta(minutes=1))\n"
        "@stream_feature_view(entities=[user], source=clicks,\n"
        "    schema=[Field('user_id', String), Field('clicks_1h', Int64)])\n"
        "def user_clicks_1h(ctx, inputs):\n"
        "    return UnifiedTransformer(ctx, window=Sliding(timedelta(hours=1)),\n"
        "        aggregator=Aggregations(clicks_1h=Count())).run(inputs)\n"
    )
    assert main(["apply", "--repo", str(repo)]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "registry", "show", "user_clicks_1h", "--json", "--repo", str(repo))
    assert code == 0 and json.loads(out)["source"] == "clicks"
    code, out, _ = run(
        capsys, "registry", "show", "clicks", "--kind", "sources", "--json", "--repo", str(repo)
    )
    assert code == 0 and json.loads(out)["kind"] == "kafka"
    from featurestore.config import feast_store, load_settings

    source = feast_store(load_settings(repo)).get_data_source("clicks")
    spec = json.loads(source.tags["mlfs.spec"])
    assert spec["kind"] == "kafka" and spec["topic"] == "clicks"
    assert spec["bootstrap_servers"] == "${KAFKA_BROKERS}"  # stored as written, never resolved
    assert (spec["max_out_of_orderness_ms"], spec["allowed_lateness_ms"]) == (2000, 60000)


def test_registry_holds_no_code_and_lookups_need_none(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", "--repo", str(repo)]) == 0
    registry = (repo / "data" / "registry.db").read_bytes()
    assert b"def payment_amounts" not in registry and b"return UnifiedTransformer" not in registry
    assert b"dill" not in registry and b"cloudpickle" not in registry
    (repo / "features.py").unlink()  # lookups read stored JSON, never the repository's code
    capsys.readouterr()
    code, out, _ = run(capsys, "registry", "show", "user_payment_stats_7d", "--repo", str(repo))
    assert code == 0 and "sum(amount)" in out


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("compact_min_files: 1", "compact_min_files must be a whole number of at least 2, got 1"),
        ("compact_every_s: soon", "compact_every_s must be a number of seconds, got 'soon'"),
    ],
)
def test_bad_stream_settings_are_one_line(
    repo: Path, capsys: pytest.CaptureFixture[str], setting: str, message: str
) -> None:
    """A bad offline-compaction setting stops `mlfs serve-stream` before any Flink job starts."""
    config = repo / "feature_store.yaml"
    config.write_text(config.read_text().replace("mlfs:\n", f"mlfs:\n  flink:\n    {setting}\n", 1))
    capsys.readouterr()
    code, _, err = run(capsys, "serve-stream", "--repo", str(repo), "--for", "1")
    assert code == 1
    assert err.strip().splitlines() == [f"mlfs: error: mlfs.flink.{message}"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--attach"], "--attach needs --flink-master HOST:PORT (the cluster's REST API)"),
        (
            ["--application", "--flink-master", "x:1"],
            "--application submits to the cluster it runs in: no --flink-master",
        ),
        (
            ["--attach", "--application", "--flink-master", "x:1"],
            "--attach and --application: one or the other",
        ),
        (
            ["--application"],
            "--application is the job's main under Flink's PythonDriver (the Kubernetes operator's "
            "application mode, standalone-job.sh, flink run); here, run serve-stream without it",
        ),
    ],
)
def test_bad_cluster_flags_are_one_line(
    repo: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    capsys.readouterr()
    code, _, err = run(capsys, "serve-stream", *flags, "--repo", str(repo))
    assert code == 1
    assert err.strip().splitlines() == [f"mlfs: error: {message}"]


@pytest.mark.parametrize("command", [["apply"], ["backfill"], ["serve-stream", "--for", "1"]])
def test_a_misspelt_setting_is_refused_naming_it(
    repo: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = repo / "feature_store.yaml"
    config.write_text(config.read_text().replace("mlfs:\n", "mlfs:\n  flink:\n    compact_evry_s: 5\n", 1))
    capsys.readouterr()
    code, _, err = run(capsys, *command, "--repo", str(repo))
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith(f"mlfs: error: {config}: unknown setting mlfs.flink.compact_evry_s (known: ")
    assert "compact_every_s" in line


COMPOUND_VIEW = """

@stream_feature_view(
    entities=[user, merchant],
    source=payments,
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="merchant_id", dtype=String),
        Field(name="pair_count_7d", dtype=Int64),
    ],
)
def user_merchant_7d(ctx, inputs):
    return UnifiedTransformer(
        ctx, window=Sliding(size=timedelta(days=7)), aggregator=Aggregations(pair_count_7d=Count())
    ).run(inputs)
"""


@pytest.mark.slow
def test_a_view_keyed_by_two_entities_is_read_back_by_feast(repo: Path) -> None:
    # What the two-join-key error tells a user to write: one entity per key, both in entities=[...].
    import pandas as pd

    from backfill.history import history_path, read_history
    from featurestore.config import feast_store
    from featurestore.repo import load_repo
    from transforms.plan import EVENT_TIMESTAMP

    features = repo / "features.py"
    features.write_text(features.read_text() + COMPOUND_VIEW)
    assert main(["apply", "--repo", str(repo)]) == 0
    args = ["backfill", "user_merchant_7d", "--engine", "reference", "--end", AS_OF.isoformat()]
    assert main([*args, "--repo", str(repo)]) == 0
    loaded = load_repo(repo)
    view = loaded.views["user_merchant_7d"]
    rows = [r for r in view.run(read_history(history_path(loaded, view))).rows if r[EVENT_TIMESTAMP] < AS_OF]
    latest: dict[tuple[str, str], dict[str, object]] = {}
    for row in sorted(rows, key=lambda r: r[EVENT_TIMESTAMP]):
        latest[(row["user_id"], row["merchant_id"])] = row
    pairs = sorted(latest)[:20]
    store = feast_store(loaded.settings)
    online = store.get_online_features(
        features=["user_merchant_7d:pair_count_7d"],
        entity_rows=[{"user_id": u, "merchant_id": m} for u, m in pairs],
    ).to_dict()
    assert online["pair_count_7d"] == [latest[p]["pair_count_7d"] for p in pairs]
    assert {latest[p]["pair_count_7d"] for p in pairs} != {0}  # not only emptied windows
    asked = rows[::7][:20]
    entity_df = pd.DataFrame(
        {
            "user_id": [r["user_id"] for r in asked],
            "merchant_id": [r["merchant_id"] for r in asked],
            "event_timestamp": [r[EVENT_TIMESTAMP] for r in asked],
        }
    )
    history = store.get_historical_features(entity_df=entity_df, features=["user_merchant_7d:pair_count_7d"])
    got = history.to_df().sort_values(["user_id", "merchant_id", "event_timestamp"])
    want = sorted((r["user_id"], r["merchant_id"], r[EVENT_TIMESTAMP], r["pair_count_7d"]) for r in asked)
    assert [int(n) for n in got["pair_count_7d"]] == [w[3] for w in want]


def _replaced(old: str, new: str) -> Callable[[str], str]:
    def replace(text: str) -> str:
        assert old in text
        return text.replace(old, new, 1)

    return replace


BROKEN_FILES = {
    # (file, how it is broken, the one-line error after "mlfs: error: ")
    **{case: ("features.py", _replaced(old, new), message) for case, (old, new, message) in BROKEN.items()},
    "undefined variable": (
        "feature_store.yaml",
        lambda text: text.replace("path: data/online_store.db", "path: ${MLFS_NOPE_UNDEFINED}/online.db"),
        "feature_store.yaml: ${MLFS_NOPE_UNDEFINED} is not set in the environment",
    ),
    "not UTF-8": (
        "feature_store.yaml",
        lambda text: text.replace("provider: local", "provider: loc\udcffal"),
        "feature_store.yaml: not UTF-8 text (byte ",
    ),
    "YAML syntax": (
        "feature_store.yaml",
        lambda text: text.replace("provider: local", "provider: [local"),
        "feature_store.yaml: not valid YAML: ",
    ),
    "sys.exit in a repository file": (
        "features.py",
        lambda text: text.replace("\nuser = Entity(", "\nimport sys\nsys.exit(3)\nuser = Entity(", 1),
        "features.py: importing failed (line ",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_broken_definitions_configuration_and_files_are_one_line_errors_and_change_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    assert main(["apply", "--repo", str(repo)]) == 0
    registry = repo / "data" / "registry.db"
    before = registry.read_bytes()
    name, breaks, message = BROKEN_FILES[case]
    path = repo / name
    path.write_bytes(breaks(path.read_text()).encode("utf-8", "surrogateescape"))
    capsys.readouterr()
    for command in ("plan", "apply"):
        code, out, err = run(capsys, command, "--repo", str(repo))
        assert code == 1 and out == "", (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mlfs: error: "), err
        assert message in lines[0], err
    assert registry.read_bytes() == before
    assert not list(repo.glob("*MLFS_NOPE*")) and not list(repo.glob("$*"))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _amount_as_text(path: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    index = table.schema.get_field_index("amount")
    pq.write_table(table.set_column(index, "amount", pc.cast(table.column("amount"), "string")), path)


def _no_time(path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(path).drop_columns(["timestamp"]), path)


BROKEN_HISTORY = {
    "truncated": (_truncated, "is not readable Parquet: "),
    "amount as text": (_amount_as_text, ": column 'amount' is string, but view "),
    "no time column": (_no_time, " has no column 'timestamp' (view "),
}


@pytest.mark.parametrize("case", sorted(BROKEN_HISTORY))
def test_broken_history_files_are_one_line_errors_before_any_work(
    repo: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    assert main(["apply", "--repo", str(repo)]) == 0
    end = ["--end", AS_OF.isoformat(), "--engine", "reference", "--repo", str(repo)]
    assert main(["backfill", *end]) == 0
    offline = repo / "data" / "offline"
    before = {p: p.read_bytes() for p in offline.rglob("*") if p.is_file()}
    breaks, message = BROKEN_HISTORY[case]
    history = repo / "data" / "history" / "payments.parquet"
    breaks(history)
    capsys.readouterr()
    for engine, dry_run in (("reference", []), ("spark", ["--dry-run"])):
        code, _, err = run(capsys, "backfill", *end[:-3], engine, "--repo", str(repo), *dry_run)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1, err
        assert lines[0].startswith(f"mlfs: error: history file {history}") and message in lines[0], err
    assert {p: p.read_bytes() for p in offline.rglob("*") if p.is_file()} == before


def _lookup_view(name: str, lookup: str, key: str = "String", source: str = "payments") -> str:
    return (
        f"@stream_feature_view(entities=[user], schema=[Field('user_id', {key}), Field('n', Int64)], "
        f"source={source}, name='{name}')\n"
        f"def {name}(ctx, inputs):\n"
        f"    return UnifiedTransformer(ctx, joins=[{lookup}], aggregator=Aggregations(n=Count()))"
        ".run(inputs)\n"
    )


BAD_JOINS = {
    "cycle": (
        _lookup_view("loop_a", "Lookup('loop_b', features=['n'], on=['user_id'])")
        + _lookup_view("loop_b", "Lookup('loop_a', features=['n'], on=['user_id'])"),
        "view 'loop_a': lookup cycle: loop_a -> loop_b -> loop_a",
    ),
    "unknown view": (
        _lookup_view("enriched", "Lookup('user_stats', features=['n'], on=['user_id'])"),
        "view 'enriched': looks up unknown view 'user_stats' (views: ",
    ),
    "unknown feature": (
        _lookup_view(
            "enriched", "Lookup('user_payment_stats_7d', features=['amount_mean_7d'], on=['user_id'])"
        ),
        "view 'enriched': looks up feature 'amount_mean_7d', which view 'user_payment_stats_7d' "
        "does not have",
    ),
    "key not mapped": (
        _lookup_view("enriched", "Lookup('merchant_amount_1h', features=['amount_max_1h'], on=['user_id'])"),
        "the lookup of 'merchant_amount_1h' must map a field to each of its keys (merchant_id), got on=",
    ),
    "key type": (
        _lookup_view(
            "enriched",
            "Lookup('user_payment_stats_7d', features=['amount_sum_7d'], on=['user_id'])",
            key="Int64",
        ),
        "key mismatch: 'user_id' is Int64 here but 'user_payment_stats_7d''s key 'user_id' is String",
    ),
    "source not in repo": (
        "elsewhere = FileStreamSource(name='elsewhere', path='x', history='x.parquet')\n"
        + _lookup_view(
            "enriched",
            "IntervalJoin(FileStreamSource(name='hidden', path='y', history='y.parquet'), on=['payment_id'], "
            "within=(timedelta(0), timedelta(hours=1)))",
        ),
        "view 'enriched': joins source 'hidden', which is not defined at module level",
    ),
    "same field twice": (
        _lookup_view(
            "enriched",
            "Lookup('user_payment_stats_7d', features=['amount_sum_7d'], on=['user_id']), "
            "Lookup('user_payment_stats_7d', features=['amount_sum_7d'], on=['user_id'])",
        ),
        "both add field 'amount_sum_7d'; give one a prefix",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JOINS))
def test_bad_joins_fail_apply_with_one_line_naming_file_and_view(
    repo: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    body, message = BAD_JOINS[case]
    (repo / "joined.py").write_text(
        "from datetime import timedelta\nfrom featurestore import *\nfrom features import payments, user\n"
        + body
    )
    capsys.readouterr()
    code, out, err = run(capsys, "apply", "--repo", str(repo))
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("mlfs: error: joined.py: "), err
    assert message in lines[0], err
    assert not (repo / "data" / "registry.db").exists()
