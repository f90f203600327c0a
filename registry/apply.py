"""``mlfs plan`` / ``mlfs apply``: compare a repository with the Feast registry, then register it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from featurestore.config import feast_store
from featurestore.repo import FeatureRepo
from registry.feast_objects import (
    OUTPUT_KIND,
    TAG_KIND,
    TAG_MANAGED,
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


def _managed(objects: list[Any]) -> dict[str, Any]:
    return {o.name: o for o in objects if o.tags.get(TAG_MANAGED) == "true"}


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
    held_entities = _managed(store.list_entities())
    all_sources = _managed(store.list_data_sources())
    outputs = {n: s for n, s in all_sources.items() if s.tags.get(TAG_KIND) == OUTPUT_KIND}
    held_sources = {n: s for n, s in all_sources.items() if n not in outputs}
    held_views = _managed(store.list_feature_views())

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
        changes.append(_compare("view", name, held_views.get(name), view.spec(), obj.tags[TAG_SPEC_HASH]))

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
    return ApplyPlan(changes, objects, deletions)


def apply_repo(repo: FeatureRepo, store: Any | None = None) -> ApplyPlan:
    """Register every definition of ``repo`` in the Feast registry and remove deleted ones."""
    store = store if store is not None else feast_store(repo.settings)
    plan = plan_repo(repo, store)
    store.apply(plan.objects, objects_to_delete=plan.deletions, partial=False)
    return plan
