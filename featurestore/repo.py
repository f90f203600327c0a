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
