"""Loading a feature repository: import its Python files and collect and check its definitions.

Like Feast's repositories: every ``*.py`` file under the repository is imported (except hidden
folders, ``data/`` and the glob patterns in ``.mlfsignore``), and the entities, sources and views
found at module level make up the repository. Any problem is a ``DefinitionError`` naming the
file, the view and what is wrong; nothing is written until the whole repository is valid.
"""

from __future__ import annotations

import fnmatch
import importlib
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurestore.config import RepoSettings, load_settings
from featurestore.definitions import Entity, StreamSource
from featurestore.view import StreamFeatureView
from transforms.errors import DefinitionError
from transforms.usercode import USER_CODE_ERRORS

IGNORE_FILE = ".mlfsignore"
_SKIP_DIRS = {"data", "__pycache__", "venv", ".venv", "node_modules"}


@dataclass
class FeatureRepo:
    """A loaded repository: its settings and definitions, each with the file defining it."""

    settings: RepoSettings
    entities: dict[str, Entity] = field(default_factory=dict)
    sources: dict[str, StreamSource] = field(default_factory=dict)
    views: dict[str, StreamFeatureView] = field(default_factory=dict)
    files: dict[tuple[str, str], str] = field(default_factory=dict)

    def view(self, name: str) -> StreamFeatureView:
        try:
            return self.views[name]
        except KeyError:
            known = ", ".join(sorted(self.views)) or "none"
            raise DefinitionError(None, f"no view named {name!r} (views: {known})") from None

    def file_of(self, kind: str, name: str) -> str:
        return self.files.get((kind, name), "?")


def _ignored(relative: Path, patterns: list[str]) -> bool:
    text = relative.as_posix()
    return any(
        fnmatch.fnmatch(text, p) or fnmatch.fnmatch(relative.name, p) or text.startswith(p.rstrip("/") + "/")
        for p in patterns
    )


def repo_files(repo: Path) -> list[Path]:
    """The Python files of a repository, relative to it, in a stable order."""
    ignore = repo / IGNORE_FILE
    patterns = []
    if ignore.is_file():
        patterns = [
            line.strip()
            for line in ignore.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    found = []
    for path in sorted(repo.rglob("*.py")):
        relative = path.relative_to(repo)
        if any(part.startswith(".") or part in _SKIP_DIRS for part in relative.parts[:-1]):
            continue
        if not _ignored(relative, patterns):
            found.append(relative)
    return found


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


# Modules imported from repositories, so that loading another repository (or the same one again)
# re-imports its files instead of reusing stale modules of the same name.
_REPO_MODULES: set[str] = set()


def _import(repo: Path, relative: Path) -> Any:
    name = _module_name(relative)
    try:
        module = importlib.import_module(name)
    except DefinitionError as err:
        raise err.in_file(relative.as_posix()) from None
    except USER_CODE_ERRORS as err:
        line = ""
        for frame in reversed(traceback.extract_tb(err.__traceback__)):
            if frame.filename == str(repo / relative):
                line = f" (line {frame.lineno})"
                break
        raise DefinitionError(
            None, f"importing failed{line}: {type(err).__name__}: {err}", relative.as_posix()
        ) from None
    origin = getattr(module, "__file__", None)
    if origin is None or Path(origin).resolve() != (repo / relative).resolve():
        raise DefinitionError(
            None,
            f"module name {name!r} is already taken by {origin or 'a built-in module'}; rename the file",
            relative.as_posix(),
        )
    _REPO_MODULES.add(name)
    return module


def load_repo(path: str | Path) -> FeatureRepo:
    """Import a repository's files and return its checked definitions."""
    settings = load_settings(path)
    repo_path = settings.repo_path
    files = repo_files(repo_path)
    for loaded in list(_REPO_MODULES):
        sys.modules.pop(loaded, None)
    _REPO_MODULES.clear()
    sys.path.insert(0, str(repo_path))
    repo = FeatureRepo(settings)
    try:
        for relative in files:
            module = _import(repo_path, relative)
            _collect(repo, module, relative.as_posix())
    finally:
        sys.path.remove(str(repo_path))
    _check(repo)
    return repo


def _collect(repo: FeatureRepo, module: Any, file: str) -> None:
    kinds: list[tuple[str, type, dict[str, Any]]] = [
        ("entity", Entity, repo.entities),
        ("source", StreamSource, repo.sources),
        ("view", StreamFeatureView, repo.views),
    ]
    for value in vars(module).values():
        for kind, cls, table in kinds:
            if not isinstance(value, cls):
                continue
            name: str = value.name  # type: ignore[attr-defined]
            held = table.get(name)
            if held is None:
                table[name] = value
                repo.files[(kind, name)] = file
            elif held is not value:
                other = repo.files[(kind, name)]
                raise DefinitionError(
                    name if kind == "view" else None,
                    f"duplicate {kind} name {name!r} (also defined in {other})",
                    file,
                )


def _check(repo: FeatureRepo) -> None:
    for name, view in repo.views.items():
        file = repo.file_of("view", name)
        for entity in view.entities:
            if repo.entities.get(entity.name) != entity:
                raise DefinitionError(
                    name,
                    f"missing entity {entity.name!r}: it is not defined at module level in the repository",
                    file,
                )
        if repo.sources.get(view.source.name) != view.source:
            raise DefinitionError(
                name,
                f"source {view.source.name!r} is not defined at module level in the repository",
                file,
            )
    _check_joins(repo)


def _check_joins(repo: FeatureRepo) -> None:
    """Every lookup names a view of the repository, its features and all its keys (of the same
    types where the field is also a key here), every interval join a source of the repository, and
    no view looks itself up through others."""
    for name, view in repo.views.items():
        file = repo.file_of("view", name)
        own_keys = dict(view.plan.keys)
        for join in view.plan.interval_joins:
            if repo.sources.get(join.source_name) != join.source:
                raise DefinitionError(
                    name, f"joins source {join.source_name!r}, which is not defined at module level", file
                )
        for lookup in view.plan.lookups:
            target = repo.views.get(lookup.view)
            if target is None:
                known = ", ".join(sorted(repo.views)) or "none"
                raise DefinitionError(name, f"looks up unknown view {lookup.view!r} (views: {known})", file)
            features = [f for f, _ in target.plan.output_features]
            for feature in lookup.features:
                if feature not in features:
                    raise DefinitionError(
                        name,
                        f"looks up feature {feature!r}, which view {lookup.view!r} does not have "
                        f"(its features: {', '.join(features)})",
                        file,
                    )
            target_keys = dict(target.plan.keys)
            mapped = [key for _, key in lookup.on]
            if sorted(mapped) != sorted(target_keys):
                raise DefinitionError(
                    name,
                    f"the lookup of {lookup.view!r} must map a field to each of its keys "
                    f"({', '.join(target_keys)}), got on={dict(lookup.on)}",
                    file,
                )
            for event_field, key in lookup.on:
                if event_field in own_keys and own_keys[event_field] != target_keys[key]:
                    raise DefinitionError(
                        name,
                        f"key mismatch: {event_field!r} is {own_keys[event_field]} here but "
                        f"{lookup.view!r}'s key {key!r} is {target_keys[key]}",
                        file,
                    )
    for name in repo.views:
        cycle = _lookup_cycle(repo, name, [])
        if cycle:
            raise DefinitionError(name, f"lookup cycle: {' -> '.join(cycle)}", repo.file_of("view", name))


def _lookup_cycle(repo: FeatureRepo, name: str, path: list[str]) -> list[str] | None:
    """A chain of lookups from ``path`` through ``name`` back to a view on it, if there is one."""
    if name in path:
        return [*path[path.index(name) :], name]
    view = repo.views.get(name)
    for lookup in view.plan.lookups if view else ():
        cycle = _lookup_cycle(repo, lookup.view, [*path, name])
        if cycle:
            return cycle
    return None


def lookup_order(repo: FeatureRepo, names: list[str]) -> list[str]:
    """``names`` with every view they look up (directly or through others), each after the views it
    looks up (the repository is checked: no cycles)."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for lookup in repo.views[name].plan.lookups:
            visit(lookup.view)
        ordered.append(name)

    for name in names:
        visit(name)
    return ordered
