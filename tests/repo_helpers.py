"""Test helpers: an example repository configured for SQLite or a test's own Redis."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import AS_OF

from featurestore.cli import main


def generated_registry(path: Path, n: int) -> Path:
    """The example repository applied, plus ``n`` synthetic views (``registry.synthetic``) in its
    registry."""
    from featurestore.config import feast_store
    from featurestore.repo import load_repo
    from registry.synthetic import register, synthetic_objects

    example_repo(path, events=100)
    assert main(["apply", "--repo", str(path)]) == 0
    repo = load_repo(path)
    store = feast_store(repo.settings)
    register(store, synthetic_objects(repo.views["user_payment_stats_7d"], [store.get_entity("user")], n))
    return path


def example_repo(
    path: Path, events: int = 2000, redis_env: str | None = None, with_joins: bool = False
) -> Path:
    """``mlfs init`` a repository (``with_joins``: its views with joins too); with ``redis_env``, its
    online store is the Redis whose connection string is in that environment variable (as a user
    would keep credentials)."""
    extra = ["--with-joins"] if with_joins else []
    assert main(["init", str(path), "--as-of", AS_OF.isoformat(), "--events", str(events), *extra]) == 0
    if redis_env:
        config_file = path / "feature_store.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["online_store"] = {"type": "redis", "connection_string": "${" + redis_env + "}"}
        config_file.write_text(yaml.safe_dump(config))
    return path
