"""A registry shared by a team: Feast's SQL registry on the machine's PostgreSQL server as MLFS's
registry (apply, lookups, backfill), and two processes applying at once to one registry (SQL or
file) losing no update."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import AS_OF

from featurestore.cli import main
from featurestore.config import feast_store, load_settings
from registry.catalog import load_catalog

pytestmark = pytest.mark.slow

URL_ENV = "MLFS_TEST_REGISTRY_URL"
POSTGRES = os.environ.get("MLFS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROUNDS = 4


@pytest.fixture
def project(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A project of this test's own in the PostgreSQL registry, deleted afterwards."""
    name = f"mlfs_test_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv(URL_ENV, POSTGRES)
    yield name
    from sqlalchemy import MetaData, create_engine, delete

    engine = create_engine(POSTGRES)
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.begin() as conn:
        for table in metadata.tables.values():
            if "project_id" in table.c:
                conn.execute(delete(table).where(table.c.project_id == name))
    engine.dispose()


def make_repo(
    path: Path, project: str, registry: object, repo_id: str | None = None, prefix: str = ""
) -> Path:
    """The example repository under ``project``, with ``registry`` as its registry setting and, with
    ``prefix``, its views renamed (another team's views in the same project)."""
    assert main(["init", str(path), "--as-of", AS_OF.isoformat(), "--events", "200"]) == 0
    config_file = path / "feature_store.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["project"] = project
    config["registry"] = registry
    if repo_id:
        config["mlfs"]["repo_id"] = repo_id
    config_file.write_text(yaml.safe_dump(config))
    if prefix:
        features = path / "features.py"
        text = features.read_text()
        for view in ("user_payment_stats_7d", "user_last_payment_fail", "merchant_amount_1h"):
            text = text.replace(f"def {view}(", f"def {prefix}{view}(")
        features.write_text(text)
    return path


def sql_registry() -> dict[str, object]:
    # The URL stays in the environment (it may hold a password); Feast expands ${VAR}.
    return {"registry_type": "sql", "path": "${" + URL_ENV + "}", "cache_ttl_seconds": 0}


def test_postgres_registry_round_trip(
    tmp_path: Path, project: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(tmp_path / "repo", project, sql_registry())
    assert "postgresql" not in (repo / "feature_store.yaml").read_text()
    assert main(["apply", "--repo", str(repo)]) == 0
    settings = load_settings(repo)
    assert settings.registry_type == "sql"
    catalog = load_catalog(feast_store(settings))
    assert sorted(catalog.views) == ["merchant_amount_1h", "user_last_payment_fail", "user_payment_stats_7d"]
    assert catalog.view("user_payment_stats_7d").window == "sliding 7d"
    assert sorted(catalog.entities) == ["merchant", "user"] and list(catalog.sources) == ["payments"]

    capsys.readouterr()
    assert main(["plan", "--repo", str(repo)]) == 0
    assert "No changes." in capsys.readouterr().out
    args = ["backfill", "user_payment_stats_7d", "--engine", "reference", "--end", AS_OF.isoformat()]
    assert main([*args, "--repo", str(repo)]) == 0  # checks the view against the SQL registry
    capsys.readouterr()
    assert main(["registry", "show", "user_payment_stats_7d", "--json", "--repo", str(repo)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"]["backfill"]["engine"] == "reference"

    other = make_repo(tmp_path / "other", project, sql_registry())  # a second clone sees the same registry
    assert main(["plan", "--repo", str(other)]) == 0
    assert "No changes." in capsys.readouterr().out


WORKER = """
import sys
from featurestore.repo import load_repo
from registry.apply import apply_repo
from featurestore.config import feast_store

repo = load_repo(sys.argv[1])
store = feast_store(repo.settings)
print("ready", flush=True)
sys.stdin.readline()  # start together
for i in range(int(sys.argv[2])):
    for view in repo.views.values():
        view.tags["round"] = str(i)
    apply_repo(repo, store)
print("done", flush=True)
"""


@pytest.mark.parametrize("kind", ["postgres", "file"])
def test_concurrent_applies_lose_no_update(tmp_path: Path, project: str, kind: str) -> None:
    registry: object = sql_registry() if kind == "postgres" else str(tmp_path / "shared" / "registry.db")
    a = make_repo(tmp_path / "a", project, registry, repo_id="team-a")
    b = make_repo(tmp_path / "b", project, registry, repo_id="team-b", prefix="b_")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(repo), str(ROUNDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for repo in (a, b)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0 and out.strip() == "done", err[-3000:]

    catalog = load_catalog(feast_store(load_settings(a)))
    views = ["user_payment_stats_7d", "user_last_payment_fail", "merchant_amount_1h"]
    assert sorted(catalog.views) == sorted([*views, *(f"b_{v}" for v in views)])
    for view in catalog.views.values():
        assert view.tags["round"] == str(ROUNDS - 1), view.name
        assert [h["version"] for h in view.history] == list(range(1, ROUNDS + 1)), view.name
    assert sorted(catalog.entities) == ["merchant", "user"]
