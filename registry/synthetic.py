"""A synthetic registry of many views, for load tests and the lookup benchmark: copies of a real
view's definition with their own names, owners, tags, entities and features, registered in one
Feast apply."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from featurestore.view import StreamFeatureView
from registry.feast_objects import TAG_HISTORY, TAG_SPEC, TAG_SPEC_HASH, feast_feature_view
from transforms.plan import spec_hash

TEAMS = ("risk", "growth", "payments", "fraud", "credit", "ops", "marketing", "support")
WORDS = ("amount", "count", "fail", "refund", "login", "click", "balance", "limit", "score", "latency")


def synthetic_name(i: int) -> str:
    return f"view_{i:05d}"


def synthetic_objects(template: StreamFeatureView, entities: list[Any], n: int, seed: int = 7) -> list[Any]:
    """``n`` Feast feature views shaped like ``template`` (its entities must be in ``entities``),
    named ``view_00000`` onwards; view ``i`` belongs to team ``TEAMS[i % 8]``."""
    rng = random.Random(seed)
    base = feast_feature_view(template, entities, Path("/synthetic"))
    template_spec = template.spec()
    objects = []
    for i in range(n):
        team = TEAMS[i % len(TEAMS)]
        words = rng.sample(WORDS, 3)
        spec = json.loads(json.dumps(template_spec))
        spec["name"] = spec["plan"]["view"] = synthetic_name(i)
        spec["owner"] = f"{team}@example.com"
        spec["tags"] = {"team": team, "tier": str(i % 3)}
        spec["description"] = f"synthetic view {i} about {' and '.join(words)}"
        for f, word in zip(spec["plan"]["features"], words, strict=False):
            f["name"] = f"{word}_{f['name']}_{i}"
        obj = base.__copy__()
        obj.name = synthetic_name(i)
        obj.owner = spec["owner"]
        obj.description = spec["description"]
        digest = spec_hash(spec)
        obj.tags = {
            **base.tags,
            **spec["tags"],
            TAG_SPEC: json.dumps(spec, sort_keys=True),
            TAG_SPEC_HASH: digest,
            TAG_HISTORY: json.dumps([{"version": 1, "spec_hash": digest, "applied_at": None}]),
        }
        objects.append(obj)
    return objects


def register(store: Any, objects: list[Any]) -> None:
    """Add ``objects`` to a file registry in one write (Feast's own apply rescans the registry for
    every view, which takes minutes for thousands of views)."""
    registry = store.registry
    if getattr(registry, "cached_registry_proto", None) is None and not hasattr(registry, "commit"):
        raise ValueError("synthetic registries are written to a file registry only")
    registry.refresh(store.project)
    proto = registry.cached_registry_proto
    for obj in objects:
        view_proto = obj.to_proto()
        view_proto.spec.project = store.project
        proto.feature_views.append(view_proto)
    registry.commit()
