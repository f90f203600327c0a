"""Repository settings: Feast's ``feature_store.yaml`` plus its ``mlfs:`` section.

``${VAR}`` references anywhere in the file are replaced from the environment (as Feast does), so
credentials such as a Redis password live in the environment, never in the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transforms.errors import MLFSError

CONFIG_FILE = "feature_store.yaml"


class ConfigError(MLFSError):
    """``feature_store.yaml`` is missing or invalid."""


@dataclass(frozen=True)
class RepoSettings:
    """Where a repository keeps its registry, stores and dead letters."""

    repo_path: Path
    project: str
    registry_type: str  # file | sql
    registry: str  # the registry file's path, or the SQL registry's database URL
    online_store: dict[str, Any]
    offline_path: Path
    dead_letter_path: Path
    work_path: Path
    mlfs: dict[str, Any] = field(default_factory=dict)

    @property
    def online_type(self) -> str:
        return str(self.online_store.get("type", "sqlite"))

    @property
    def registry_path(self) -> Path:
        """The registry file (a file registry only)."""
        if self.registry_type != "file":
            raise ConfigError(f"the {self.registry_type} registry has no file")
        return Path(self.registry)

    @property
    def repo_id(self) -> str:
        """Which repository owns the objects it registers: ``mlfs.repo_id``, by default the project
        (repositories sharing one project's registry each set their own)."""
        return str(self.mlfs.get("repo_id") or self.project)


def _resolve(repo: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else repo / path


def load_settings(repo_path: str | Path) -> RepoSettings:
    """Read ``feature_store.yaml`` in ``repo_path`` (``ConfigError`` with the reason if unusable)."""
    repo = Path(repo_path).resolve()
    config_file = repo / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(f"no {CONFIG_FILE} in {repo} (create a repository with `mlfs init DIR`)")
    try:
        raw = yaml.safe_load(os.path.expandvars(config_file.read_text())) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{config_file}: not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("project"), str):
        raise ConfigError(f"{config_file}: needs a 'project' name")
    registry = raw.get("registry", "data/registry.db")
    registry_type = "file"
    if isinstance(registry, dict):
        registry_type = str(registry.get("registry_type", "file"))
        if registry_type not in ("file", "sql"):
            raise ConfigError(
                f"{config_file}: registry_type {registry_type!r} is not supported (use file or sql)"
            )
        registry = registry.get("path", "data/registry.db")
    if registry_type == "file":
        registry = str(_resolve(repo, str(registry)))
    online = raw.get("online_store") or {"type": "sqlite", "path": "data/online_store.db"}
    if isinstance(online, str):
        online = {"type": online}
    if online.get("type", "sqlite") not in ("sqlite", "redis"):
        raise ConfigError(
            f"{config_file}: online_store type {online.get('type')!r} is not supported (use sqlite or redis)"
        )
    mlfs = raw.get("mlfs") or {}
    if not isinstance(mlfs, dict):
        raise ConfigError(f"{config_file}: the 'mlfs' section must be a mapping")
    return RepoSettings(
        repo_path=repo,
        project=raw["project"],
        registry_type=registry_type,
        registry=str(registry),
        online_store=dict(online),
        offline_path=_resolve(repo, str(mlfs.get("offline_path", "data/offline"))),
        dead_letter_path=_resolve(repo, str(mlfs.get("dead_letter_path", "data/dead_letter"))),
        work_path=_resolve(repo, str(mlfs.get("work_path", "data/work"))),
        mlfs=dict(mlfs),
    )


def feast_store(settings: RepoSettings) -> Any:
    """The stock Feast ``FeatureStore`` of the repository (imports Feast, which takes seconds)."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.repo_path))
