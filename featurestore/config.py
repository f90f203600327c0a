"""Repository settings: Feast's ``feature_store.yaml`` plus its ``mlfs:`` section.

``${VAR}`` references in the file are replaced from the environment (as Feast does), so
credentials such as a Redis password live in the environment, never in the file; a reference to a
variable that is not set is an error naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
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
    registry_options: dict[str, Any] = field(default_factory=dict)  # the ``registry`` mapping as written
    entity_key_version: int = 3  # Feast's ``entity_key_serialization_version``

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
    def registry_file(self) -> Path | None:
        """The registry as a local file MLFS reads itself (``registry.read_catalog``), else None
        (a SQL registry, or a file in an object store, which Feast reads)."""
        if self.registry_type != "file" or "://" in str(self.registry_options.get("path", "")):
            return None
        return Path(self.registry)

    @property
    def repo_id(self) -> str:
        """Which repository owns the objects it registers: ``mlfs.repo_id``, by default the project
        (repositories sharing one project's registry each set their own)."""
        return str(self.mlfs.get("repo_id") or self.project)


def _resolve(repo: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else repo / path


_REFERENCE = re.compile(r"\$\{([^}]*)\}")


def _parse(config_file: Path, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{config_file}: not valid YAML: {problem}{where}") from None


def _references(value: Any) -> Iterator[str]:
    """The ``${NAME}`` references in the keys and string values of parsed YAML."""
    if isinstance(value, str):
        yield from _REFERENCE.findall(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _references(key)
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _read_config(config_file: Path) -> Any:
    """The file's YAML with ``${NAME}`` references replaced from the environment, as Feast reads
    it (references in comments are not looked at); an undefined reference is an error."""
    try:
        text = config_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{config_file}: not UTF-8 text (byte {err.start})") from None
    undefined = sorted({name for name in _references(_parse(config_file, text)) if name not in os.environ})
    if undefined:
        names = ", ".join(f"${{{name}}}" for name in undefined)
        raise ConfigError(f"{config_file}: {names} is not set in the environment")
    return _parse(config_file, os.path.expandvars(text)) or {}


# Every key of feature_store.yaml's ``mlfs:`` section (a section maps to its keys); an unknown key is
# refused at once, so a misspelt setting is not silently ignored.
MLFS_KEYS: dict[str, Any] = {
    "offline_path": None,
    "dead_letter_path": None,
    "work_path": None,
    "repo_id": None,
    "backfill": {"engine": None, "chunk_rows": None},
    "spark": {"master": None},
    "flink": {
        "master": None,
        "parallelism": None,
        "checkpoint_interval_s": None,
        "poll_interval_ms": None,
        "compact_every_s": None,
        "compact_min_files": None,
        "consistency_every_s": None,
        "consistency_sample": None,
        "metrics_port": None,
        "metrics_host": None,
        "max_restarts": None,
        "restart_delay_s": None,
        "jars": None,
        "config": "any",  # Flink's own configuration entries
    },
}


def unknown_mlfs_key(
    section: dict[str, Any], known: dict[str, Any] = MLFS_KEYS, where: str = "mlfs"
) -> str | None:
    """The first key of ``section`` (``feature_store.yaml``'s ``mlfs:``) that MLFS does not read, as
    a dotted name with the known ones, or None."""
    for key, value in section.items():
        if key not in known:
            return f"{where}.{key} (known: {', '.join(sorted(known))})"
        if isinstance(known[key], dict):
            if not isinstance(value, dict):
                return f"{where}.{key} must be a mapping"
            found = unknown_mlfs_key(value, known[key], f"{where}.{key}")
            if found:
                return found
    return None


def load_settings(repo_path: str | Path) -> RepoSettings:
    """Read ``feature_store.yaml`` in ``repo_path`` (``ConfigError`` with the reason if unusable)."""
    repo = Path(repo_path).resolve()
    config_file = repo / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(f"no {CONFIG_FILE} in {repo} (create a repository with `mlfs init DIR`)")
    raw = _read_config(config_file)
    if not isinstance(raw, dict) or not isinstance(raw.get("project"), str):
        raise ConfigError(f"{config_file}: needs a 'project' name")
    registry = raw.get("registry", "data/registry.db")
    registry_options = dict(registry) if isinstance(registry, dict) else {"path": registry}
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
    unknown = unknown_mlfs_key(mlfs)
    if unknown:
        raise ConfigError(f"{config_file}: unknown setting {unknown}")
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
        registry_options=registry_options,
        entity_key_version=_key_version(config_file, raw.get("entity_key_serialization_version", 3)),
    )


def _key_version(config_file: Path, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(
            f"{config_file}: entity_key_serialization_version must be an integer, not {value!r}"
        )
    return value


def feast_store(settings: RepoSettings) -> Any:
    """The stock Feast ``FeatureStore`` of the repository (imports Feast, which takes seconds)."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.repo_path))
