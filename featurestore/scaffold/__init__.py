"""``mlfs init``: a working example repository in a payments domain, with generated data."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.errors import MLFSError

TEMPLATES = ("feature_store.yaml", "features.py", "read_features.py", ".mlfsignore")
EMBEDDING_TEMPLATE = "features_embeddings.py"  # a view with a pretrained text model (opt-in: it loads MiniLM)
JOINS_TEMPLATE = "features_joins.py"  # views with joins (opt-in until serve-stream runs joins)
REFUND_REASONS = ("returned", "duplicate", "fraud")
REFUND_SCHEMA = pa.schema(
    [
        ("refund_id", pa.string()),
        ("payment_id", pa.string()),
        ("amount", pa.float64()),
        ("reason", pa.string()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
    ]
)
FAILURE_REASONS = ("insufficient_funds", "ach_nsf", "card_declined")

HISTORY_SCHEMA = pa.schema(
    [
        ("payment_id", pa.string()),
        ("user_id", pa.string()),
        ("merchant_id", pa.string()),
        ("amount", pa.float64()),
        ("status", pa.string()),
        ("failure_reason", pa.string()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
    ]
)


def generate_payments(
    start: datetime,
    end: datetime,
    events: int,
    users: int = 200,
    merchants: int = 40,
    seed: int = 7,
) -> list[dict[str, Any]]:
    """Random but reproducible payment events in ``[start, end)``, in time order."""
    rng = random.Random(seed)
    span_ms = int((end - start).total_seconds() * 1000)
    out: list[dict[str, Any]] = []
    for i in range(events):
        at = start + timedelta(milliseconds=rng.randrange(span_ms))
        failed = rng.random() < 0.12
        out.append(
            {
                "payment_id": f"p{seed}-{i:07d}",
                "user_id": f"u{rng.randrange(users):04d}",
                "merchant_id": f"m{rng.randrange(merchants):03d}",
                "amount": round(rng.lognormvariate(3.5, 1.0), 2),
                "status": "failed" if failed else "succeeded",
                "failure_reason": rng.choice(FAILURE_REASONS) if failed else None,
                "timestamp": at,
            }
        )
    out.sort(key=lambda e: e["timestamp"])
    return out


def generate_refunds(payments: list[dict[str, Any]], seed: int = 9) -> list[dict[str, Any]]:
    """Refunds of about 4% of the succeeded payments, mostly within a day of the payment (some
    later, outside the example's join bound), in time order."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for payment in payments:
        if payment["status"] != "succeeded" or payment["timestamp"] is None or rng.random() >= 0.04:
            continue
        delay = timedelta(minutes=rng.randrange(1, 36 * 60))
        out.append(
            {
                "refund_id": f"r{seed}-{len(out):06d}",
                "payment_id": payment["payment_id"],
                "amount": round(payment["amount"] * rng.choice([1.0, 1.0, 0.5]), 2),
                "reason": rng.choice(REFUND_REASONS),
                "timestamp": payment["timestamp"] + delay,
            }
        )
    out.sort(key=lambda e: e["timestamp"])
    return out


def write_refunds(
    repo: Path, history: list[dict[str, Any]], stream: list[dict[str, Any]], live_from: datetime
) -> None:
    """The refunds source: refunds before ``live_from`` as history, later ones as a stream file."""
    refunds = generate_refunds(history + stream)
    path = repo / "data" / "history" / "refunds.parquet"
    past = [r for r in refunds if r["timestamp"] < live_from]
    past.append({**past[0], "refund_id": "bad-no-time", "timestamp": None})  # a dead letter on refunds
    pq.write_table(pa.Table.from_pylist(past, schema=REFUND_SCHEMA), path)
    lines = [
        json.dumps({**r, "timestamp": r["timestamp"].isoformat()})
        for r in refunds
        if r["timestamp"] >= live_from
    ]
    stream_dir = repo / "data" / "stream" / "refunds"
    stream_dir.mkdir(parents=True, exist_ok=True)
    (stream_dir / "refunds-000001.jsonl").write_text("".join(f"{line}\n" for line in lines))


def write_example_data(
    repo: Path, as_of: datetime, history_events: int = 20_000, with_joins: bool = False
) -> dict[str, int]:
    """History (Parquet, 28 days before the last hour) and stream files (the last hour).

    A few deliberately bad events show the dead letter at work: events without a user or a time
    in the history, and an unparseable line and an impossible time in the stream.
    """
    live_from = as_of - timedelta(hours=1)
    history = generate_payments(live_from - timedelta(days=28), live_from, history_events)
    history += [
        {**history[10], "payment_id": "bad-no-user", "user_id": None},
        {**history[20], "payment_id": "bad-no-time", "timestamp": None},
    ]
    history_path = repo / "data" / "history" / "payments.parquet"
    history_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(history, schema=HISTORY_SCHEMA), history_path)

    stream = generate_payments(live_from, as_of, max(history_events // 600, 20), seed=8)
    lines = [json.dumps({**e, "timestamp": e["timestamp"].isoformat()}) for e in stream]
    lines.insert(3, '{"payment_id": "bad-json", "user_id": ')
    lines.insert(7, json.dumps({**stream[0], "payment_id": "bad-time", "timestamp": "yesterday"}))
    stream_dir = repo / "data" / "stream" / "payments"
    stream_dir.mkdir(parents=True, exist_ok=True)
    (stream_dir / "payments-000001.jsonl").write_text("\n".join(lines) + "\n")
    if with_joins:
        write_refunds(repo, history, stream, live_from)
    return {"history": len(history), "stream": len(lines)}


def project_name(directory: Path) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]", "_", directory.resolve().name).strip("_") or "mlfs"
    return name if not name[0].isdigit() else f"p_{name}"


def init_repo(
    directory: Path,
    as_of: datetime | None = None,
    force: bool = False,
    history_events: int = 20_000,
    with_embeddings: bool = False,
    with_joins: bool = False,
) -> dict[str, int]:
    """Create the example repository in ``directory`` (which must be empty unless ``force``)."""
    if directory.exists() and any(directory.iterdir()) and not force:
        raise MLFSError(f"{directory} is not empty (use --force to write into it anyway)")
    directory.mkdir(parents=True, exist_ok=True)
    templates = resources.files("featurestore.scaffold") / "templates"
    names = (
        TEMPLATES
        + ((EMBEDDING_TEMPLATE,) if with_embeddings else ())
        + ((JOINS_TEMPLATE,) if with_joins else ())
    )
    for name in names:
        text = (templates / name).read_text()
        (directory / name).write_text(text.replace("{{project}}", project_name(directory)))
    as_of = as_of or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return write_example_data(directory, as_of, history_events, with_joins)
