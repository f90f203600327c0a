"""``mlfs plan`` / ``mlfs apply``: compare a repository with the Feast registry, then register it."""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from featurestore.config import feast_store
from featurestore.repo import FeatureRepo
from registry.feast_objects import (
    HISTORY_KEPT,
    OUTPUT_KIND,
    TAG_HISTORY,
    TAG_KIND,
    TAG_MANAGED,
    TAG_REPO,
    TAG_SPEC,
    TAG_SPEC_HASH,
    feast_entity,
    feast_feature_view,
    feast_history_source,
    output_source_name,
)
from transforms.dtypes import String


@dataclass(frozen=True)
class Change:
    """One difference between the repository and the registry."""

    kind: str  # entity | source | view
    name: str
    action: str  # create | update | delete | unchanged
    detail: str = ""

    def line(self) -> str:
        mark = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}[self.action]
        text = f"{mark} {self.kind} {self.name}"
        return f"{text} ({self.detail})" if self.detail else text


def _managed(objects: list[Any], repo_id: str) -> dict[str, Any]:
    """The MLFS objects this repository registered (another repository sharing the project keeps
    its own; objects from before repositories were recorded count as this one's)."""
    return {
        o.name: o
        for o in objects
        if o.tags.get(TAG_MANAGED) == "true" and o.tags.get(TAG_REPO, repo_id) == repo_id
    }


def _history(held: Any, change: Change, new_hash: str) -> list[dict[str, Any]]:
    """The view's definition versions: the held ones plus this apply's if it changes the view."""
    history: list[dict[str, Any]] = json.loads(held.tags.get(TAG_HISTORY, "[]")) if held is not None else []
    if not history and held is not None:  # registered before versions were recorded
        history = [{"version": 1, "spec_hash": held.tags.get(TAG_SPEC_HASH, ""), "applied_at": None}]
    if change.action in ("create", "update"):
        history.append(
            {
                "version": history[-1]["version"] + 1 if history else 1,
                "spec_hash": new_hash,
                "applied_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "changes": change.detail,
            }
        )
    return history[-HISTORY_KEPT:]


def _diff_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed.extend(_diff_keys(a, b, f"{prefix}{key}."))
        else:
            changed.append(f"{prefix}{key}")
    return changed


def _compare(
    kind: str, name: str, held: Any, new_spec: dict[str, Any] | None, new_hash: str | None
) -> Change:
    if held is None:
        return Change(kind, name, "create")
    if new_hash is not None and held.tags.get(TAG_SPEC_HASH) == new_hash:
        return Change(kind, name, "unchanged")
    old_spec = json.loads(held.tags.get(TAG_SPEC, "{}"))
    if new_spec is not None and old_spec == new_spec:
        return Change(kind, name, "unchanged")
    changed = _diff_keys(old_spec, new_spec or {})
    return Change(kind, name, "update", "changed: " + ", ".join(changed[:6]) if changed else "")


@dataclass
class ApplyPlan:
    """The changes ``apply`` would make and the Feast objects that make them."""

    changes: list[Change]
    objects: list[Any]
    deletions: list[Any]

    @property
    def has_changes(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)


def plan_repo(repo: FeatureRepo, store: Any | None = None) -> ApplyPlan:
    """Build the Feast objects of ``repo`` and compare them with what the registry holds."""
    store = store if store is not None else feast_store(repo.settings)
    repo_id = repo.settings.repo_id
    held_entities = _managed(store.list_entities(allow_cache=False), repo_id)
    all_sources = _managed(store.list_data_sources(allow_cache=False), repo_id)
    outputs = {n: s for n, s in all_sources.items() if s.tags.get(TAG_KIND) == OUTPUT_KIND}
    held_sources = {n: s for n, s in all_sources.items() if n not in outputs}
    held_views = _managed(store.list_feature_views(allow_cache=False), repo_id)

    changes: list[Change] = []
    objects: list[Any] = []
    entity_objects: dict[str, Any] = {}
    key_types = {f.name: f.dtype for view in repo.views.values() for f in view.key_fields}
    for name, entity in sorted(repo.entities.items()):
        dtype = key_types.get(entity.join_keys[0], String)
        obj = feast_entity(entity, dtype)
        entity_objects[name] = obj
        objects.append(obj)
        spec = {**entity.spec(), "dtype": str(dtype)}
        obj.tags[TAG_SPEC] = json.dumps(spec, sort_keys=True)
        changes.append(_compare("entity", name, held_entities.get(name), spec, None))
    for name, source in sorted(repo.sources.items()):
        obj = feast_history_source(source, repo.settings.repo_path)
        objects.append(obj)
        changes.append(_compare("source", name, held_sources.get(name), source.spec(), None))
    for name, view in sorted(repo.views.items()):
        obj = feast_feature_view(
            view, [entity_objects[e.name] for e in view.entities], repo.settings.offline_path
        )
        objects.append(obj)
        held = held_views.get(name)
        change = _compare("view", name, held, view.spec(), obj.tags[TAG_SPEC_HASH])
        changes.append(change)
        obj.tags[TAG_HISTORY] = json.dumps(_history(held, change, obj.tags[TAG_SPEC_HASH]))

    deletions: list[Any] = []
    for kind, held, current in (
        ("view", held_views, repo.views),
        ("source", held_sources, repo.sources),
        ("entity", held_entities, repo.entities),
    ):
        for name in sorted(set(held) - set(current)):
            deletions.append(held[name])
            changes.append(Change(kind, name, "delete"))
            if kind == "view" and output_source_name(name) in outputs:
                deletions.append(outputs[output_source_name(name)])
    for obj in objects:
        obj.tags[TAG_REPO] = repo_id
        if hasattr(obj, "batch_source") and obj.batch_source is not None:
            obj.batch_source.tags[TAG_REPO] = repo_id
    return ApplyPlan(changes, objects, deletions)


@contextmanager
def registry_lock(repo: FeatureRepo) -> Iterator[None]:
    """Serialise applies to a file registry (Feast rewrites the whole file, so two concurrent
    applies would lose one's update); a SQL registry writes object by object and needs no lock."""
    if repo.settings.registry_type != "file":
        yield
        return
    path = repo.settings.registry_path.with_name(repo.settings.registry_path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


APPLY_ATTEMPTS = 5


def apply_repo(repo: FeatureRepo, store: Any | None = None) -> ApplyPlan:
    """Register every definition of ``repo`` in the Feast registry and remove deleted ones.

    Another process applying at the same time never loses this one's update: a file registry is
    locked for the apply, and on a SQL registry a write that collides with another process's insert
    of the same object (a shared entity) is planned and applied again."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    store = store if store is not None else feast_store(repo.settings)
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        try:
            with registry_lock(repo):
                plan = plan_repo(repo, store)
                store.apply(plan.objects, objects_to_delete=plan.deletions, partial=False)
            return plan
        except (IntegrityError, OperationalError):
            if attempt == APPLY_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")
