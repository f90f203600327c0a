"""A streaming job's dead letters are written once, across restarts: the sink half, without Flink
(test_stream_recovery kills and restores a real job)."""

from __future__ import annotations

import json
from pathlib import Path

from repo_helpers import example_repo

from featurestore.repo import load_repo
from featurestore.stream.service import lineage_key, lineage_of, remember_lineage
from featurestore.stream.sinks import LiveOutcomes, StoreRows, read_status
from transforms.events import DeadLetter, EventCounts


def letter(n: int) -> DeadLetter:
    return DeadLetter(view="v", reason="bad_json", detail="", raw=f"event {n}")


def test_a_restarted_sink_skips_the_letters_its_lineage_wrote(tmp_path: Path) -> None:
    letters, status = tmp_path / "dead", tmp_path / "status"
    first = LiveOutcomes("v", str(letters), str(status), "aaa")
    for seq in (3, 7):
        first.dead(letter(seq), False, seq)
    first.close()
    with next((letters / "v").glob("stream-aaa-*.jsonl")).open("a") as f:
        f.write('{"seq": 9, "raw": "cut o')  # a crash in the middle of a line

    # Restored from a checkpoint taken before seq 5: the replay brings 5 and 7 again.
    second = LiveOutcomes("v", str(letters), str(status), "aaa")
    for seq in (5, 7, 8):
        second.dead(letter(seq), False, seq)
    second.close()
    lines = [line for f in (letters / "v").glob("stream-*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(json.loads(line)["seq"] for line in lines if line.endswith("}")) == [3, 7, 8]

    # Another lineage (a fresh start) numbers its events from 1 again: nothing is skipped.
    fresh = LiveOutcomes("v", str(letters), str(status), "bbb")
    fresh.dead(letter(5), False, 5)
    fresh.close()
    assert len(list((letters / "v").glob("stream-bbb-*.jsonl"))) == 1


def test_a_joined_view_s_parts_keep_their_own_letters_and_counts(tmp_path: Path) -> None:
    """A view with joins has three writers: its source's stage 1, its joins (letters in event-time
    order, so a restart skips each seq it wrote, not all below the highest) and its other source
    (counted apart)."""
    letters, status = tmp_path / "dead", tmp_path / "status"
    own = LiveOutcomes("v", str(letters), str(status), "aaa")
    own.dead(letter(4), False, 4)
    own.update(EventCounts(input=10, filtered=1, dead_lettered=1), 5)
    joins = LiveOutcomes("v", str(letters), str(status), "aaa", "joins", ordered=False)
    for seq in (9, 2):
        joins.dead(letter(seq), False, seq)
    joins.update(EventCounts(aggregated=6, filtered=1, dead_lettered=2), None)
    other = LiveOutcomes("v", str(letters), str(status), "aaa", "source-refunds")
    other.dead(letter(2), True, 2)  # the other source's seq 2: another event
    other.update(EventCounts(input=3, aggregated=2, late=1), 8)
    for part in (own, joins, other):
        part.close()

    # Restored before all of them: the joins' replay brings 2, 5 and 9 again.
    again = LiveOutcomes("v", str(letters), str(status), "aaa", "joins", ordered=False)
    for seq in (9, 5, 2):
        again.dead(letter(seq), False, seq)
    again.close()
    written = {f.name.split("-aaa-")[0] for f in (letters / "v").glob("*.jsonl")}
    assert sorted(written) == ["stream", "stream-joins", "stream-source-refunds"]
    joined = sorted(
        json.loads(line)["seq"]
        for f in (letters / "v").glob("stream-joins-*")
        for line in f.read_text().splitlines()
    )
    assert joined == [2, 5, 9]
    got = read_status(status, "v")
    assert got.counts == EventCounts(input=10, aggregated=6, filtered=2, dead_lettered=3)
    assert got.source_counts == {"refunds": EventCounts(input=3, aggregated=2, late=1)}


def test_a_job_carries_on_the_lineage_of_what_it_restores(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    assert lineage_of(checkpoints, None) != lineage_of(checkpoints, None)  # fresh starts
    remember_lineage(checkpoints, "0123abcd", "aaa")  # a job's checkpoints, by its id
    savepoint = f"file:{checkpoints}/savepoints/savepoint-0123ab-ffee"  # as Flink reports it
    remember_lineage(checkpoints, lineage_key(savepoint), "aaa")
    remember_lineage(checkpoints, "4567ef01", "bbb")
    assert lineage_of(checkpoints, checkpoints / "0123abcd" / "chk-42") == "aaa"
    assert lineage_of(checkpoints, checkpoints / "savepoints" / "savepoint-0123ab-ffee") == "aaa"
    assert lineage_of(checkpoints, checkpoints / "4567ef01" / "chk-7") == "bbb"
    # A savepoint a cluster took of a recorded job (the operator's, on an upgrade): that job's.
    remember_lineage(checkpoints, "c0ffee" + "0" * 26, "ccc")
    assert lineage_of(checkpoints, checkpoints / "savepoint-c0ffee-123456abcdef") == "ccc"
    # A snapshot no run recorded (an earlier MLFS version's): a lineage of its own.
    assert lineage_of(checkpoints, checkpoints / "89abcdef" / "chk-1") not in ("aaa", "bbb")


def test_the_highest_seq_is_read_per_source_partition(tmp_path: Path) -> None:
    """A restarted letter sink skips, in each source partition, what was written of it before: the
    partitions' letters interleave in the files, and a line cut off by a crash is skipped."""
    from featurestore.stream.sinks import highest_seqs, seq_partition
    from transforms.engines.flink_stage1 import SEQ_PARTITION_BITS

    def seq(partition: int, position: int) -> int:
        return (partition << SEQ_PARTITION_BITS) + position

    lines = [json.dumps({"seq": seq(p, n)}) for n in range(1, 50) for p in (0, 3)]
    (tmp_path / "stream-a-1.jsonl").write_text("\n".join(lines) + '\n{"seq": ' + str(seq(0, 90)))
    (tmp_path / "stream-a-2.jsonl").write_text(json.dumps({"seq": seq(3, 7)}) + "\n")
    (tmp_path / "stream-b-1.jsonl").write_text(json.dumps({"seq": seq(1, 99)}) + "\n")
    assert highest_seqs(tmp_path, "stream-a") == {0: seq(0, 49), 3: seq(3, 49)}
    assert seq_partition(seq(3, 49)) == 3 and seq_partition(49) == 0
    assert highest_seqs(tmp_path, "stream-c") == {}


def row_letter(user: str, second: int) -> DeadLetter:
    row = {"user_id": user, "event_timestamp": f"2026-11-01 00:00:{second:02d}+00:00", "amount_sum_7d": 1.5}
    return DeadLetter(view="user_payment_stats_7d", reason="model_error", detail="", raw=json.dumps(row))


def test_a_restarted_row_sink_skips_the_rows_its_lineage_dead_lettered(tmp_path: Path) -> None:
    """Rows after the last checkpoint are aggregated and scored again after a restart: a row an
    after-aggregation model stage could not score is dead-lettered once per lineage."""
    repo = load_repo(example_repo(tmp_path / "repo", events=100))
    view = repo.views["user_payment_stats_7d"]
    letters, status = tmp_path / "dead", tmp_path / "status"

    def sink(lineage: str) -> StoreRows:
        return StoreRows(view, str(repo.settings.repo_path), str(status), str(letters), lineage)

    first = sink("aaa")
    first.dead([row_letter("u1", 1), row_letter("u2", 1)])
    first.close()
    with next((letters / view.name).glob("stream-rows-aaa-*.jsonl")).open("a") as f:
        f.write('{"raw": "{\\"user_id\\": \\"u3", "rea')  # a crash in the middle of a line

    second = sink("aaa")  # the replay brings u2 again, and rows the first run never reached
    second.dead([row_letter("u2", 1), row_letter("u3", 1), row_letter("u1", 2)])
    second.close()
    written = [
        json.loads(line)["raw"]
        for f in (letters / view.name).glob("stream-rows-aaa-*.jsonl")
        for line in f.read_text().splitlines()
        if line.endswith("}")
    ]
    expected = [("u1", 1), ("u2", 1), ("u3", 1), ("u1", 2)]
    assert sorted(written) == sorted(row_letter(user, second).raw for user, second in expected)
    assert read_status(status, view.name).sink.rows_dead_lettered == 4  # 2 by each run

    fresh = sink("bbb")  # a fresh start replays the sources from the beginning: a new lineage
    fresh.dead([row_letter("u1", 1)])
    fresh.close()
    assert len((next((letters / view.name).glob("stream-rows-bbb-*.jsonl"))).read_text().splitlines()) == 1
