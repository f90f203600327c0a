"""The operator's fuzz file as a JSON-lines history: the embedded, Spark and reference backfills
give every hostile line the dead letter the reference (and so the stream) gives it, the valid lines
the reference's rows offline and online, and the four counts balance."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import AS_OF
from repo_helpers import example_repo
from test_backfill_e2e import latest
from test_hostile_events import hostile_lines
from test_stream_service import assert_same_outcome, online_values, payments, plain_rows

from backfill.history import file_lines, history_files, read_history
from featurestore.cli import main
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.repo import load_repo
from featurestore.runstatus import last_backfill
from transforms.events import EventCounts
from transforms.plan import EVENT_TIMESTAMP

pytestmark = pytest.mark.slow

VIEWS = [
    ("user_payment_stats_7d", "user_id"),  # a Select
    ("user_last_payment_fail", "user_id"),  # a Python row function
    ("merchant_amount_1h", "merchant_id"),  # no transform, tumbling
]
FIVE_MINUTES_IN = (AS_OF + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S").encode()
END = AS_OF + timedelta(days=9)  # after every row, the 7-day window's leaving rows included


def fuzz_lines(rng: random.Random, good: int = 600, hostile: int = 2400) -> list[bytes]:
    """Valid payments around ``AS_OF`` with the engine tests' hostile lines as payments in between
    (five minutes in; without the one at the end of time, which would make a stream's later lines
    late)."""
    valid = [line.encode() for line in payments(rng, 0, good)]
    bad = [
        line.replace(b'"user_id": "k', b'"user_id": "u00')
        .replace(b'"v":', b'"amount":')
        .replace(b"2026-03-01T00:00:01", FIVE_MINUTES_IN)
        for line in hostile_lines(rng, hostile)
        if b"9999-" not in line
    ]
    half = len(valid) // 2
    return valid[:half] + bad + valid[half:]


def write_lines(path: Path, lines: list[bytes], rng: random.Random) -> None:
    """``lines`` ended by ``\\n``, ``\\r\\n`` or (before a non-empty line) ``\\r``, the last one by
    nothing: every ending the stream's reader knows."""
    out = bytearray()
    for i, line in enumerate(lines):
        out += line
        if i + 1 < len(lines):
            endings = [b"\n", b"\r\n"] + ([b"\r"] if lines[i + 1] else [])
            out += rng.choice(endings)
    path.write_bytes(bytes(out))


def test_lines_are_split_where_the_streams_reader_splits_them(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = [b"", b"a", b"", b"\xff\xfe", b"{}", b"", b"x" * 100]
    path = tmp_path / "h.jsonl"
    write_lines(path, lines, rng)
    assert list(file_lines(path)) == lines
    (tmp_path / "h.jsonl").write_bytes(b"a\r\nb\n\nc\r\r\n")
    assert list(file_lines(path)) == [b"a", b"b", b"", b"c", b""]
    assert history_files(tmp_path) == [path]


def test_a_mixed_list_of_files_is_read_in_its_order(tmp_path: Path) -> None:
    """History Parquet, then the stream's JSON lines, then Parquet again (``mlfs consistency
    --events``): each file's events in the order the files are given, each in its own form."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "b.parquet")
    (tmp_path / "a.jsonl").write_bytes(b'{"a": 3}\n{"a": \n')
    pq.write_table(pa.table({"a": [4]}), tmp_path / "c.parquet")
    files = [tmp_path / "b.parquet", tmp_path / "a.jsonl", tmp_path / "c.parquet"]
    assert list(read_history(files)) == [{"a": 1}, {"a": 2}, b'{"a": 3}', b'{"a": ', {"a": 4}]


@pytest.mark.parametrize("engine", ["embedded", "spark", "reference"])
def test_a_fuzzed_json_lines_history_gives_the_references_letters_rows_and_counts(
    tmp_path: Path, engine: str
) -> None:
    rng = random.Random(11)
    repo_path = example_repo(tmp_path / "repo", events=100)
    lines = fuzz_lines(rng)
    history = repo_path / "data" / "history" / "payments"
    history.mkdir()
    cut = len(lines) // 3  # three files, read in name order
    parts = {"b.jsonl": lines[cut : 2 * cut], "a.jsonl": lines[:cut], "c.jsonl": lines[2 * cut :]}
    for name, part in parts.items():
        write_lines(history / name, part, rng)
    (repo_path / "data" / "history" / "payments.parquet").unlink()
    features = repo_path / "features.py"
    text = features.read_text()
    features.write_text(text.replace("data/history/payments.parquet", "data/history/payments"))
    assert main(["apply", "--repo", str(repo_path)]) == 0
    assert main(["backfill", "--repo", str(repo_path), "--engine", engine, "--end", END.isoformat()]) == 0

    repo = load_repo(repo_path)
    offline = ParquetOfflineStore(repo.settings.offline_path)
    for name, key in VIEWS:
        view = repo.views[name]
        expected = view.run(lines)
        rows = [r for r in expected.rows if r[EVENT_TIMESTAMP] < END]
        got_rows = offline.read(view).drop_columns(["created_timestamp"]).to_pylist()
        want = latest(rows, key)
        assert_same_outcome(
            {
                "offline": plain_rows(got_rows),
                "online": online_values(repo, name, key, sorted(want)),
                "dead letters": sorted(
                    (d["reason"], d["raw"])
                    for f in sorted((repo.settings.dead_letter_path / name).glob("backfill-*.jsonl"))
                    for d in map(json.loads, f.read_text().splitlines())
                ),
                "counts": EventCounts(**last_backfill(repo.settings.work_path, name)["counts"]),  # type: ignore[index]
            },
            {
                "offline": plain_rows(rows),
                "online": {f.name: [want[k][f.name] for k in sorted(want)] for f in view.feature_fields},
                "dead letters": sorted((d.reason, d.raw) for d in expected.dead_letters),
                "counts": expected.counts,
            },
        )
        assert expected.counts.balanced and expected.counts.input == len(lines)
        assert len(expected.dead_letters) > 500 and len(rows) > 5


def test_verify_runs_a_json_lines_sample_bad_lines_included(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mlfs verify` hands every engine the lines themselves, so the hostile ones are compared too."""
    repo_path = example_repo(tmp_path / "repo", events=100)
    events = tmp_path / "fuzz.jsonl"
    write_lines(events, fuzz_lines(random.Random(4), good=200, hostile=400), random.Random(4))
    assert main(["apply", "--repo", str(repo_path)]) == 0
    capsys.readouterr()
    for name, _ in VIEWS:
        args = ["verify", name, "--events", str(events), "--engines", "embedded,spark", "--sample", "500"]
        code = main([*args, "--repo", str(repo_path)])
        out = capsys.readouterr().out
        assert code == 0 and out.count("identical") == 2, out
        assert out.count("(500 events:") == 3 and "dead-lettered" in out, out


def test_the_flink_line_reader_splits_and_marks_lines_as_python_does(tmp_path: Path) -> None:
    """``Utf8Lines`` (the stream's file reader, in Java) gives the lines ``file_lines`` gives, as
    the text ``event_text`` makes of each, over files of hostile lines, line ends of every kind
    (a ``\\r\\n`` split across the reader's 64 KiB buffer too), lines longer than the buffer and
    non-UTF-8 bytes."""
    from pyflink.java_gateway import get_gateway

    from transforms.engines.flink import flink_environment
    from transforms.events import event_text

    flink_environment(1)  # MLFS's jar on the gateway's class path
    jvm = get_gateway().jvm
    rng = random.Random(11)
    cases = [b"", b"\n", b"\r", b"\r\n", b"a", b"a\r", b"\n\n\r\r\n", "é\n€\r\n\U0001f600".encode()]
    lines = [*fuzz_lines(rng, good=300, hostile=700), b"x" * 70_000, "ü".encode() * 40_000, b"\xff" * 3]
    for n in range(4):
        path = tmp_path / f"{n}.jsonl"
        write_lines(path, rng.sample(lines, len(lines)), rng)
        cases.append(path.read_bytes())
    edge = b"y" * (65_536 - 1) + b"\r\nz\r" + b"w" * 65_536 + b"\n"  # \r then \n in the next read
    cases.append(edge)
    for i, data in enumerate(cases):
        path = tmp_path / f"case-{i}.jsonl"
        path.write_bytes(data)
        stream = jvm.org.apache.flink.core.fs.local.LocalDataInputStream(jvm.java.io.File(str(path)))
        config = jvm.org.apache.flink.configuration.Configuration()
        reader = jvm.mlfs.flink.Utf8Lines().createReader(config, stream)
        got = []
        while (text := reader.read()) is not None:
            got.append(text)
        reader.close()
        assert got == [event_text(line) for line in file_lines(path)], f"case {i}"
