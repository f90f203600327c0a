"""The registry lookup API (Python and CLI) over the example repository and over a generated
registry of 10k views: listings with filters, search, definitions with version history, lineage
and runtime status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import AS_OF
from repo_helpers import generated_registry

from featurestore.cli import main
from featurestore.config import feast_store, load_settings
from featurestore.repo import load_repo
from registry.catalog import Catalog, RegistryLookupError, load_catalog, paginate
from registry.lineage import lineage
from registry.status import view_status
from registry.synthetic import TEAMS
from transforms.errors import DefinitionError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example repository with the embedding view, applied twice (the second time with one
    view changed) and backfilled with the reference engine."""
    path = tmp_path_factory.mktemp("lookup") / "repo"
    args = ["init", str(path), "--as-of", AS_OF.isoformat(), "--events", "300", "--with-embeddings"]
    assert main(args) == 0
    assert main(["apply", "--repo", str(path)]) == 0
    features = path / "features.py"
    features.write_text(features.read_text().replace("timedelta(days=7)", "timedelta(days=14)", 1))
    assert main(["apply", "--repo", str(path)]) == 0
    backfill = ["backfill", "user_payment_stats_7d", "--engine", "reference", "--end", AS_OF.isoformat()]
    assert main([*backfill, "--repo", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def catalog(repo: Path) -> Catalog:
    return load_catalog(feast_store(load_settings(repo)))


def names(records: list[object]) -> list[str]:
    return [r.name for r in records]  # type: ignore[attr-defined]


def test_listings_and_filters(catalog: Catalog) -> None:
    everything = [
        "merchant_amount_1h",
        "user_failure_semantics_7d",
        "user_last_payment_fail",
        "user_payment_stats_7d",
    ]
    assert names(catalog.list_views()) == everything
    assert names(catalog.list_views(entity="merchant")) == ["merchant_amount_1h"]
    assert names(catalog.list_views(tag="team=risk")) == [
        "user_failure_semantics_7d",
        "user_last_payment_fail",
        "user_payment_stats_7d",
    ]
    assert names(catalog.list_views(tag="team")) == [n for n in everything if catalog.views[n].tags]
    assert names(catalog.list_views(owner="merchants@example.com")) == ["merchant_amount_1h"]
    assert names(catalog.list_views(source="payments")) == everything
    assert names(catalog.list_views(feature="amount")) == ["merchant_amount_1h", "user_payment_stats_7d"]
    assert names(catalog.list_views(feature="count")) == ["merchant_amount_1h", "user_payment_stats_7d"]
    assert names(catalog.list_views(entity="user", feature="count")) == ["user_payment_stats_7d"]
    assert names(catalog.list_views(source="clicks")) == []
    assert [f.qualified for f in catalog.list_features(view="user_payment_stats_7d")] == [
        "user_payment_stats_7d:payment_count_7d",
        "user_payment_stats_7d:amount_sum_7d",
        "user_payment_stats_7d:fail_count_7d",
    ]
    assert names(catalog.list_sources()) == ["payments"]
    assert [(e.name, e.join_keys) for e in catalog.list_entities()] == [
        ("merchant", ("merchant_id",)),
        ("user", ("user_id",)),
    ]
    (model,) = catalog.list_models()
    assert model.kind == "model" and model.used_by == ("user_failure_semantics_7d",)
    assert "SentenceEmbeddingHandler" in model.description
    with pytest.raises(RegistryLookupError, match="cannot be filtered by owner"):
        catalog.listing("sources", owner="x")
    with pytest.raises(RegistryLookupError, match="unknown kind 'widgets'"):
        catalog.listing("widgets")


def test_definition_history_and_errors(catalog: Catalog) -> None:
    view = catalog.view("user_payment_stats_7d")
    detail = view.detail()
    assert detail["window"] == "sliding 14d"
    assert detail["event_transform"]["ref"].startswith("Select(")
    assert len(detail["event_transform"]["source_sha256"]) == 64
    assert [a["aggregation"] for a in detail["aggregations"]] == ["count()", "sum(amount)", "sum(failed)"]
    assert detail["ttl_s"] == 30 * 86400 and detail["online"] and detail["offline"]
    assert [h["version"] for h in view.history] == [1, 2]
    assert "plan.window.size_ms" in view.history[1]["changes"]
    assert view.history[0]["spec_hash"] != view.history[1]["spec_hash"] == view.spec_hash
    assert catalog.view("merchant_amount_1h").version == 1  # unchanged by the second apply
    semantics = catalog.view("user_failure_semantics_7d").detail()
    (stage,) = semantics["inference"]["before_aggregation"]
    assert stage["model"]["kind"] == "single"
    with pytest.raises(RegistryLookupError, match="did you mean user_payment_stats_7d"):
        catalog.view("user_payment_stats")
    with pytest.raises(RegistryLookupError, match="has no feature 'amount_sum'; did you mean amount_sum_7d"):
        catalog.feature("user_payment_stats_7d:amount_sum")
    assert catalog.feature("user_payment_stats_7d:amount_sum_7d").aggregation == "sum(amount)"


def test_search_ranks_names_first(catalog: Catalog) -> None:
    hits = [(h.kind, h.name) for h in catalog.search("merchant")]
    assert hits[0] == ("entity", "merchant")  # the exact name
    assert ("view", "merchant_amount_1h") in hits
    assert [h for h in catalog.search("RISK") if h.kind == "view"] == [
        h for h in catalog.search("risk") if h.kind == "view"
    ]
    assert {h.name for h in catalog.search("risk", ["views"])} == {
        "merchant_amount_1h",  # its tag is team=merchant-risk
        "user_failure_semantics_7d",
        "user_last_payment_fail",
        "user_payment_stats_7d",
    }
    assert [h.name for h in catalog.search("fail_count", ["features"])] == [
        "user_payment_stats_7d:fail_count_7d"
    ]
    assert catalog.search("no-such-thing") == []
    with pytest.raises(RegistryLookupError, match="empty"):
        catalog.search("")
    # Only spaces are looked for as they are (the HTTP API accepts such a query): descriptions have them.
    assert "user_payment_stats_7d" in {h.name for h in catalog.search(" ", ["views"])}


def test_lineage_connects_source_transform_view_stores_and_models(catalog: Catalog) -> None:
    graph = lineage(catalog, "user_payment_stats_7d")
    edges = {(a.split(":")[0], b.split(":")[0]) for a, b, _ in graph.edges}
    assert edges == {("source", "transform"), ("transform", "view"), ("view", "store")}
    assert "view:merchant_amount_1h" not in graph.nodes
    semantics = lineage(catalog, "user_failure_semantics_7d")
    model_id = f"model:{catalog.list_models()[0].name}"
    assert (model_id, "view:user_failure_semantics_7d", "scores") in semantics.edges
    source = lineage(catalog, "source:payments")
    assert {n for n in source.nodes if n.startswith("view:")} == {f"view:{n}" for n in catalog.views}
    entity = lineage(catalog, "entity:merchant")
    assert ("entity:merchant", "view:merchant_amount_1h", "keys") in entity.edges
    assert {n for n in entity.nodes if n.startswith("view:")} == {"view:merchant_amount_1h"}
    with pytest.raises(RegistryLookupError):
        lineage(catalog, "nothing_here")


def test_status_records_backfills_and_dead_letters(repo: Path) -> None:
    settings = load_settings(repo)
    status = view_status(settings, "user_payment_stats_7d")
    backfill = status["backfill"]
    assert backfill["engine"] == "reference" and backfill["end"] == AS_OF.isoformat()
    assert backfill["offline_rows"] > 0 and backfill["online_written"] > 0
    assert status["last_online_write"] == backfill["finished_at"]
    assert (
        status["dead_letters"]["records"] == status["dead_letters"]["backfill"] == 2
    )  # the example's bad rows
    assert backfill["counts"]["dead_lettered"] == 2
    assert status["stream"] is None
    untouched = view_status(settings, "merchant_amount_1h")
    assert untouched["backfill"] is None and untouched["last_online_write"] is None


def test_cli_lookups(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--repo", str(repo)])
        out, err = capsys.readouterr()
        return code, out, err

    capsys.readouterr()
    code, out, _ = run("registry", "list", "--entity", "user", "--json")
    assert code == 0 and [v["name"] for v in json.loads(out)] == [
        "user_failure_semantics_7d",
        "user_last_payment_fail",
        "user_payment_stats_7d",
    ]
    code, out, _ = run("registry", "list", "features", "--name", "amount")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:3] == ["FEATURE", "TYPE", "AGGREGATION"] and len(rows) == 4  # 3 features
    code, out, _ = run("registry", "show", "user_payment_stats_7d")
    assert "(version 2)" in out and "backfill:    reference up to" in out and "dead letters: 2" in out
    code, out, _ = run("registry", "search", "semantics")
    assert out.splitlines()[1].split()[:2] == ["view", "user_failure_semantics_7d"]
    code, out, _ = run("registry", "lineage", "user_payment_stats_7d", "--json")
    assert {"from": "view:user_payment_stats_7d", "to": "store:online", "label": "latest row per key"} in (
        json.loads(out)["edges"]
    )
    code, out, _ = run("registry", "lineage", "payments")
    assert out.splitlines()[0].split() == ["FROM", "TO", "HOW"]
    code, _, err = run("registry", "show", "users", "--kind", "entities")
    assert code == 1 and err.strip() == "mlfs: error: no registered entity named 'users'; did you mean user?"
    code, _, err = run("registry", "search", " ")
    assert code == 1 and err.count("\n") == 1


def test_reads_never_import_the_repository(repo: Path, tmp_path: Path) -> None:
    """Lookups read stored JSON: a repository whose code would fail on import still answers."""
    copy = tmp_path / "repo"
    copy.mkdir()
    (copy / "feature_store.yaml").write_text(
        (repo / "feature_store.yaml")
        .read_text()
        .replace("registry: data/registry.db", f"registry: {repo}/data/registry.db")
    )
    (copy / "features.py").write_text("raise SystemExit('registered code was imported')\n")
    catalog = load_catalog(feast_store(load_settings(copy)))
    assert len(catalog.list_views()) == 4
    assert lineage(catalog, "user_payment_stats_7d").nodes
    with pytest.raises(DefinitionError, match="registered code was imported"):
        load_repo(copy)  # the marker does fire when the code is imported


def test_generated_registry_of_10k_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = 10_000
    path = generated_registry(tmp_path / "repo", n)
    catalog = load_catalog(feast_store(load_settings(path)))
    assert len(catalog.views) == n + 3
    risk = catalog.list_views(tag="team=risk")
    assert len(risk) == n // len(TEAMS) + 2  # every 8th synthetic view, and two of the example's
    assert names(catalog.list_views(owner="fraud@example.com"))[:2] == ["view_00003", "view_00011"]
    assert len(catalog.list_views(entity="user")) == n + 2
    refund = catalog.list_views(feature="refund")
    assert refund and all(any("refund" in f["name"] for f in v.features) for v in refund)
    assert len(refund) == sum(1 for v in catalog.views.values() if "refund" in v.description)
    hits = catalog.search("view_0999")
    assert [h.name for h in hits if h.kind == "view"] == [f"view_0999{d}" for d in range(10)]
    page = paginate(catalog.list_views(), offset=9_990, limit=100, render=lambda v: v.summary())
    assert page.total == n + 3 and len(page.items) == 13 and page.next_offset is None
    first = paginate(catalog.list_views(), limit=100)
    assert first.next_offset == 100
    assert catalog.view("view_04242").detail()["definition"]["owner"] == f"{TEAMS[4242 % 8]}@example.com"

    capsys.readouterr()  # the CLI over the same registry
    assert main(["registry", "list", "--tag", "team=ops", "--json", "--repo", str(path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in listed] == [f"view_{i:05d}" for i in range(n) if TEAMS[i % 8] == "ops"]
    assert main(["registry", "search", "view_0424", "--kind", "views", "--repo", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[1:]] == [f"view_0424{d}" for d in range(10)]


def test_joins_show_in_lineage_and_definitions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """View -> view edges for lookups, source -> view edges for interval joins, and each join's
    definition in `registry show` and the HTTP API's view detail."""
    path = tmp_path / "repo"
    args = ["init", str(path), "--as-of", AS_OF.isoformat(), "--events", "200", "--with-joins"]
    assert main(args) == 0 and main(["apply", "--repo", str(path)]) == 0
    catalog = load_catalog(feast_store(load_settings(path)))
    habit = lineage(catalog, "user_amount_vs_habit_7d")
    assert (
        "view:user_payment_stats_7d",
        "view:user_amount_vs_habit_7d",
        "looked up as of each event (payment_count_7d, amount_sum_7d)",
    ) in habit.edges
    downstream = lineage(catalog, "user_payment_stats_7d")
    assert "view:user_amount_vs_habit_7d" in downstream.nodes  # who looks it up
    refunds = lineage(catalog, "source:refunds")
    assert ("source:refunds", "view:user_refunds_30d", "inner interval join") in refunds.edges
    detail = catalog.view("user_refunds_30d").detail()
    assert [j["text"] for j in detail["joins"]] == [
        "inner interval join refunds on payment_id=payment_id within 0ms before to 1d after, "
        "fields [amount, reason] prefix 'refund_'"
    ]
    capsys.readouterr()
    assert main(["registry", "show", "user_amount_vs_habit_7d", "--repo", str(path)]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("joins:")]
    assert shown == [
        "joins:       lookup user_payment_stats_7d[payment_count_7d, amount_sum_7d] on user_id=user_id "
        "as of each event strictly before, prefix 'habit_'"
    ]
