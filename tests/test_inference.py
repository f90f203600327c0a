"""Model stages on the reference engine (the oracle the other engines are compared with): event and
feature-row enrichment with a torch and an sklearn model trained here, batching, keyed scoring with
an LRU-bounded pool, A/B, shadow, cascade, point-in-time versions, and failures dead-lettered."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import EVENTS, USER, at
from inference_models import (
    as_tensor,
    sklearn_model,
    sklearn_predict,
    torch_model,
    torch_predict,
)

from featurestore import (
    Aggregations,
    Count,
    Field,
    Float64,
    Int64,
    Latest,
    Max,
    String,
    Sum,
    UnifiedTransformer,
    stream_feature_view,
)
from transforms.compare import same_value
from transforms.engines.reference import run_reference
from transforms.errors import DefinitionError
from transforms.inference import (
    ABTest,
    Batching,
    Cascade,
    Enrich,
    KeyedModels,
    Model,
    ModelPool,
    Shadow,
    StageScorer,
)
from transforms.plan import EVENT_TIMESTAMP, spec_hash


def features_of(row: dict[str, Any]) -> list[float]:
    return [row["amount"] / 100, row["hour"] / 24, row["flag"]]


def risk_inputs(row: dict[str, Any]) -> torch.Tensor:
    return as_tensor(features_of(row))


def events(n: int, users: int = 5, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "user_id": f"u{rng.randrange(users)}",
            "timestamp": at(seconds=rng.randrange(0, 86_400)).isoformat(),
            "amount": rng.randrange(1, 500),
            "hour": rng.randrange(24),
            "flag": rng.choice([0.0, 1.0]),
        }
        for _ in range(n)
    ]


def view_with(schema: list[Field], aggregator: Aggregations, name: str = "scored", **stages: Any) -> Any:
    def view_function(ctx: Any, inputs: Any) -> Any:
        return UnifiedTransformer(ctx, aggregator=aggregator, **stages).run(inputs)

    view_function.__name__ = name
    return stream_feature_view(entities=[USER], schema=[Field("user_id", String), *schema], source=EVENTS)(
        view_function
    )


def test_event_stage_scores_every_event_before_aggregation(tmp_path: Path) -> None:
    risk = torch_model(tmp_path, "risk", seed=1, version="7")
    view = view_with(
        [Field("risk_max", Float64), Field("risk_sum", Float64), Field("scored_by", String)],
        Aggregations(risk_max=Max("risk"), risk_sum=Sum("risk"), scored_by=Latest("risk_model_version")),
        enrich_events=Enrich("risk", risk, inputs=risk_inputs, outputs="risk"),
    )
    data = events(60)
    result = run_reference(view.plan, data)
    assert result.counts.aggregated == 60 and not result.dead_letters

    expected: dict[str, list[float]] = {}
    for event in data:
        expected.setdefault(event["user_id"], []).append(torch_predict(risk, features_of(event)))
    for user, scores in expected.items():
        row = max((r for r in result.rows if r["user_id"] == user), key=lambda r: r[EVENT_TIMESTAMP])
        assert row["risk_max"] == pytest.approx(max(scores), rel=1e-12)
        assert row["risk_sum"] == pytest.approx(sum(scores), rel=1e-12)
        assert row["scored_by"] == "7"


def test_row_stage_scores_feature_rows_and_records_the_model(tmp_path: Path) -> None:
    churn = sklearn_model(tmp_path, "churn", seed=3, version="2026-11")
    view = view_with(
        [
            Field("n", Int64),
            Field("total", Float64),
            Field("churn", Int64),
            Field("churn_model_id", String),
            Field("churn_model_version", String),
        ],
        Aggregations(n=Count(), total=Sum("hour")),
        enrich_rows=Enrich(
            "churn",
            churn,
            inputs=lambda row: [float(row["n"]), row["total"] / 10],
            outputs="churn",
            batching=Batching(max_batch_size=7),
        ),
    )
    result = run_reference(view.plan, events(80, users=4))
    assert result.rows and not result.dead_letters
    for row in result.rows:
        assert row["churn"] == sklearn_predict(churn, [float(row["n"]), row["total"] / 10])
        assert (row["churn_model_id"], row["churn_model_version"]) == ("churn", "2026-11")
        assert isinstance(row["churn"], int)
    assert {r["churn"] for r in result.rows} == {0, 1}, "the inputs should reach both classes"


def test_batches_respect_the_limit_and_match_scoring_one_by_one(tmp_path: Path) -> None:
    risk = torch_model(tmp_path, "risk", seed=2)
    sizes: list[int] = []

    class Counting:  # the real handler, watched
        def load_model(self) -> Any:
            return risk.handler.load_model()

        def run_inference(self, batch: Any, model: Any, inference_args: Any = None) -> Any:
            sizes.append(len(batch))
            return risk.handler.run_inference(batch, model, inference_args)

    rows = events(100)
    times = [0] * len(rows)
    batched = StageScorer(
        Enrich("r", Model("risk", Counting()), inputs=risk_inputs, outputs="s", batching=Batching(16)),
        ModelPool(),
    ).score(rows, times)
    assert sizes == [16] * 6 + [4]
    one_by_one = StageScorer(
        Enrich("r", risk, inputs=risk_inputs, outputs="s", batching=Batching(1)), ModelPool()
    ).score(rows, times)
    # torch computes a batch of 16 and a batch of 1 by different kernels, so a prediction may
    # differ in its last bit: floats are compared by the engines' rule, everything else exactly.
    assert len(batched) == len(one_by_one)
    for ours, single in zip(batched, one_by_one, strict=True):
        assert isinstance(ours, dict) and isinstance(single, dict) and ours.keys() == single.keys()
        assert all(same_value(ours[k], single[k]) for k in ours), (ours, single)
    assert [r["amount"] for r in batched] == [r["amount"] for r in rows]  # type: ignore[index]


def test_keyed_models_stay_within_the_pool_and_keep_row_order(tmp_path: Path) -> None:
    models = {f"seg{i}": torch_model(tmp_path, f"seg{i}", seed=i) for i in range(4)}
    stage = Enrich(
        "seg",
        KeyedModels("segment", models, max_loaded=2),
        inputs=risk_inputs,
        outputs="score",
        batching=Batching(32),
    )
    pool = ModelPool(max_loaded=2)
    scorer = StageScorer(stage, pool)
    rng = random.Random(5)
    rows = [{**e, "segment": f"seg{rng.randrange(4)}", "row": i} for i, e in enumerate(events(400))]
    scored: list[Any] = []
    for start in range(0, len(rows), 100):  # four batches, each holding rows of all four models
        scored += scorer.score(rows[start : start + 100], [0] * 100)

    assert [r["row"] for r in scored] == list(range(400))
    for row in scored:
        model = models[row["segment"]]
        assert row["score"] == pytest.approx(torch_predict(model, features_of(row)), rel=1e-12)
        assert (row["seg_model_id"], row["seg_model_version"]) == (row["segment"], "1")
    assert pool.stats.peak_loaded == 2
    # Grouped by model, a batch loads each of its models at most once (the two still loaded from
    # the previous batch go first): 4 loads for the first batch, then at most 2 per batch.
    assert pool.stats.loads <= 4 + 2 * 3
    ungrouped = ModelPool(max_loaded=2)
    for row in rows:  # what scoring row by row in arrival order costs
        ungrouped.get(models[row["segment"]])
    assert ungrouped.stats.loads > 5 * pool.stats.loads


def test_ab_split_is_sticky_and_near_its_fraction(tmp_path: Path) -> None:
    control = torch_model(tmp_path, "control", seed=1)
    challenger = torch_model(tmp_path, "challenger", seed=2)
    stage = Enrich(
        "ab", ABTest(control, challenger, fraction=0.2, key="user_id"), inputs=risk_inputs, outputs="s"
    )
    scorer = StageScorer(stage, ModelPool())
    n = 4000
    rows = [{"user_id": f"user-{i}", "amount": 10, "hour": 3, "flag": 1.0} for i in range(n)]
    first = [r for r in scorer.score(rows, [0] * n) if isinstance(r, dict)]  # no failures
    assert len(first) == n
    share = sum(r["ab_model_id"] == "challenger" for r in first) / n
    assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    again = [r for r in scorer.score(list(reversed(rows)), [0] * n) if isinstance(r, dict)]
    assert [r["ab_model_id"] for r in reversed(again)] == [r["ab_model_id"] for r in first]
    for row in first[:50]:
        model = challenger if row["ab_model_id"] == "challenger" else control
        assert row["s"] == pytest.approx(torch_predict(model, features_of(row)), rel=1e-12)


def test_shadow_scores_both_and_serves_one(tmp_path: Path) -> None:
    served = torch_model(tmp_path, "served", seed=1)
    shadow = torch_model(tmp_path, "shadow", seed=4)
    stage = Enrich("risk", Shadow(served, shadow), inputs=risk_inputs, outputs="score")
    rows = events(20)
    for row in StageScorer(stage, ModelPool()).score(rows, [0] * 20):
        assert isinstance(row, dict)
        assert row["score"] == pytest.approx(torch_predict(served, features_of(row)), rel=1e-12)
        assert row["risk_shadow_score"] == pytest.approx(torch_predict(shadow, features_of(row)), rel=1e-12)
        assert (row["risk_model_id"], row["risk_shadow_model_id"]) == ("served", "shadow")


def unloadable_like(model: Model, tmp_path: Path) -> Model:
    """A model of the same kind whose weights file does not exist (its load fails)."""
    handler = type(model.handler)(
        state_dict_path=str(tmp_path / "missing.pt"),
        model_class=type(model.handler.load_model()),
        model_params={},
    )
    return Model("broken", handler)


def test_a_failing_shadow_leaves_its_fields_null_counts_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served = torch_model(tmp_path, "served", seed=1)
    broken = unloadable_like(served, tmp_path)
    scorer = StageScorer(
        Enrich("risk", Shadow(served, broken), inputs=risk_inputs, outputs="score"), ModelPool()
    )
    with caplog.at_level("WARNING"):
        out = scorer.score(events(12), [0] * 12)
    assert all(isinstance(r, dict) and r["risk_shadow_score"] is None and r["score"] is not None for r in out)
    assert scorer.shadow_failures == {"model_load": 12}
    assert sum("the shadow model failed" in r.message for r in caplog.records) == 1  # once, not per row


def test_cascade_feeds_model_a_into_model_b(tmp_path: Path) -> None:
    a = torch_model(tmp_path, "a", seed=1)
    b = torch_model(tmp_path, "b", seed=2)
    view = view_with(
        [Field("b_max", Float64)],
        Aggregations(b_max=Max("b_out")),
        enrich_events=Cascade(
            Enrich("first", a, inputs=risk_inputs, outputs="a_out"),
            Enrich("second", b, inputs=lambda r: as_tensor([r["a_out"], r["flag"], 0.5]), outputs="b_out"),
        ),
    )
    data = events(30, users=3)
    result = run_reference(view.plan, data)
    best: dict[str, float] = {}
    for e in data:
        score = torch_predict(b, [torch_predict(a, features_of(e)), e["flag"], 0.5])
        best[e["user_id"]] = max(best.get(e["user_id"], -math.inf), score)
    latest = {r["user_id"]: r for r in sorted(result.rows, key=lambda r: r[EVENT_TIMESTAMP])}
    assert {user: r["b_max"] for user, r in latest.items()} == pytest.approx(best, rel=1e-12)


def test_point_in_time_versions(tmp_path: Path) -> None:
    v1 = torch_model(tmp_path, "m", seed=1, version="v1", live_from=at(seconds=100))
    v2 = torch_model(tmp_path, "m", seed=2, version="v2", live_from=at(seconds=200))
    stage = Enrich("m", KeyedModels("segment", {"s": [v2, v1]}), inputs=risk_inputs, outputs="y")
    row = {"segment": "s", "amount": 1, "hour": 2, "flag": 0.0}
    times = [int(at(seconds=s).timestamp() * 1000) for s in (50, 100, 150, 200, 250)]
    out = StageScorer(stage, ModelPool()).score([row] * 5, times)
    assert out[0].reason == "no_model"  # type: ignore[union-attr]
    assert [r["m_model_version"] for r in out[1:]] == ["v1", "v1", "v2", "v2"]  # type: ignore[index]
    assert out[3]["y"] == pytest.approx(torch_predict(v2, features_of(row)), rel=1e-12)  # type: ignore[index]


def test_failures_are_dead_lettered_and_the_rest_goes_on(tmp_path: Path) -> None:
    risk = torch_model(tmp_path, "risk", seed=1)
    broken = unloadable_like(risk, tmp_path)

    def inputs(row: dict[str, Any]) -> torch.Tensor:
        if row["amount"] % 7 == 0:
            return as_tensor([1.0, 2.0])  # the wrong shape: inference fails for this row alone
        if row["amount"] % 11 == 0:
            raise ValueError("no features for this one")
        return risk_inputs(row)

    view = view_with(
        [Field("n", Int64), Field("risk_max", Float64)],
        Aggregations(n=Count(), risk_max=Max("risk")),
        enrich_events=Enrich(
            "risk", KeyedModels("user_id", {"u0": broken}, default=risk), inputs=inputs, outputs="risk"
        ),
    )
    data = events(200, users=4, seed=9)
    result = run_reference(view.plan, data)
    reasons = Counter(d.reason for d in result.dead_letters)

    def outcome(e: dict[str, Any]) -> str:
        if e["amount"] % 7 and e["amount"] % 11 == 0:
            return "inference:input_error"  # raised before any model is involved
        if e["user_id"] == "u0":
            return "inference:model_load"
        return "inference:inference_error" if e["amount"] % 7 == 0 else "ok"

    expect = Counter(map(outcome, data))
    assert reasons["inference:model_load"] == expect["inference:model_load"] > 0
    assert reasons["inference:input_error"] == expect["inference:input_error"] > 0
    assert reasons["inference:inference_error"] == expect["inference:inference_error"] > 0
    assert result.counts.aggregated == expect["ok"]
    assert result.counts.balanced and result.counts.dead_lettered == len(result.dead_letters)
    assert all(json.loads(d.raw)["user_id"] for d in result.dead_letters)


def test_row_stage_failures_drop_the_row_with_a_dead_letter(tmp_path: Path) -> None:
    churn = sklearn_model(tmp_path, "churn", seed=3)

    def inputs(row: dict[str, Any]) -> list[float]:
        return [float(row["n"])] if row["user_id"] == "u1" else [float(row["n"]), 1.0]

    view = view_with(
        [Field("n", Int64), Field("churn", Int64)],
        Aggregations(n=Count()),
        enrich_rows=Enrich("churn", churn, inputs=inputs, outputs="churn", record_model=False),
    )
    result = run_reference(view.plan, events(40, users=3))
    assert {r["user_id"] for r in result.rows} == {"u0", "u2"}
    assert result.dead_letters and {d.reason for d in result.dead_letters} == {"inference:inference_error"}
    assert result.counts.rows_dead_lettered == len(result.dead_letters)
    assert all(json.loads(d.raw)["user_id"] == "u1" and d.event_time for d in result.dead_letters)
    assert all(EVENT_TIMESTAMP in r for r in result.rows)


def test_definition_errors_name_the_field(tmp_path: Path) -> None:
    churn = sklearn_model(tmp_path, "churn", seed=3)
    stage = Enrich("churn", churn, inputs=lambda r: [1.0, 2.0], outputs="churn")
    with pytest.raises(DefinitionError, match="stage 'churn' adds field 'churn' after aggregation"):
        _ = view_with([Field("n", Int64)], Aggregations(n=Count()), enrich_rows=stage).plan
    with pytest.raises(DefinitionError, match="two inference stages are named 'churn'"):
        _ = view_with(
            [Field("n", Int64)], Aggregations(n=Count()), enrich_events=[stage, stage], name="twice"
        ).plan
    with pytest.raises(TypeError, match="must be a Beam ModelHandler"):
        Model("x", object())


def test_registry_spec_records_models_not_code(tmp_path: Path) -> None:
    control = torch_model(tmp_path, "control", seed=1)
    challenger = sklearn_model(tmp_path, "challenger", seed=2, version="3")
    view = view_with(
        [Field("n", Int64)],
        Aggregations(n=Count()),
        enrich_events=Enrich(
            "ab", ABTest(control, challenger, 0.5, key="user_id"), inputs=risk_inputs, outputs="s"
        ),
    )
    spec = view.plan.spec()
    (stage,) = spec["inference"]["before_aggregation"]
    assert stage["model"]["kind"] == "ab_test"
    assert stage["model"]["challenger"]["version"] == "3"
    assert stage["model"]["control"]["handler"].endswith("PytorchModelHandlerTensor")
    assert stage["model"]["control"]["config"]["state_dict_path"].endswith("control-1.pt")
    assert stage["inputs"]["ref"].endswith("risk_inputs") and len(stage["inputs"]["source_sha256"]) == 64
    text = json.dumps(spec)  # plain data: names, paths and source hashes
    assert "<function" not in text and "object at 0x" not in text
    assert spec_hash(spec) == spec_hash(json.loads(text))
