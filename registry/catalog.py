"""The registry as a catalog: every view, feature, source, entity and model MLFS registered, read
from the Feast registry's stored protos and JSON definitions (never by importing registered code),
with filters, substring search and pagination.

A ``Catalog`` is a snapshot: load it once (``load_catalog``) and query it many times; the HTTP
server keeps one and reloads it when the registry changes.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from featurestore.feast_protos import feast_proto
from registry.feast_objects import TAG_HISTORY, TAG_KIND, TAG_MANAGED, TAG_SPEC, TAG_SPEC_HASH
from transforms.errors import MLFSError

if TYPE_CHECKING:
    from featurestore.config import RepoSettings

KINDS = ("views", "features", "sources", "entities", "models")
TAG_MODEL = "mlfs.model"  # on a feature service that records an `mlfs train` model set
MODEL_SET_KIND = "trained_models"


class RegistryLookupError(MLFSError):
    """A name or query that the registry cannot answer (the HTTP API answers 404 or 400)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def duration_text(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def window_text(window: dict[str, Any]) -> str:
    kind = window["kind"]
    if kind == "lifetime":
        return "lifetime"
    size = duration_text(window["size_ms"])
    if kind == "continuous":
        return f"sliding {size}"
    if kind == "tumbling":
        return f"tumbling {size}"
    return f"hopping {size} every {duration_text(window['hop_ms'])}"


def aggregation_text(spec: dict[str, Any]) -> str:
    args = [spec["column"]] if spec.get("column") else []
    args += [f"{k}={v}" for k, v in sorted(spec.items()) if k not in ("kind", "column")]
    return f"{spec['kind']}({', '.join(args)})"


def _stamp(proto_timestamp: Any) -> str | None:
    if proto_timestamp is None or not proto_timestamp.seconds:
        return None
    return datetime.fromtimestamp(proto_timestamp.seconds, UTC).isoformat()


def _tags_text(tags: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in tags.items())


def join_text(join: dict[str, Any]) -> str:
    """One join definition (a ``Lookup`` or ``IntervalJoin`` spec) as one line."""
    on = ", ".join(f"{a}={b}" for a, b in join["on"].items())
    if join["kind"] == "lookup":
        strict = " strictly before" if join["exclusive"] else ""
        return f"lookup {join['view']}[{', '.join(join['features'])}] on {on} as of each event{strict}" + (
            f", prefix {join['prefix']!r}" if join["prefix"] else ""
        )
    before, after = join["within_ms"]
    return (
        f"{join['how']} interval join {join['source']} on {on} within {duration_text(before)} before "
        f"to {duration_text(after)} after, "
        f"fields [{', '.join(join['fields'])}] prefix {join['prefix']!r}"
    )


@dataclass(frozen=True)
class ViewRecord:
    """A registered stream feature view: its stored definition, hash and version history."""

    name: str
    spec: dict[str, Any]
    spec_hash: str
    created: str | None = None
    updated: str | None = None
    history: tuple[dict[str, Any], ...] = ()

    @cached_property
    def window(self) -> str:
        return window_text(self.spec["plan"]["window"])

    @cached_property
    def features(self) -> list[dict[str, Any]]:
        return list(self.spec["plan"]["features"])

    @cached_property
    def entities(self) -> list[str]:
        return list(self.spec["entities"])

    @cached_property
    def source(self) -> str:
        return str(self.spec["source"])

    @cached_property
    def owner(self) -> str:
        return str(self.spec.get("owner") or "")

    @cached_property
    def tags(self) -> dict[str, str]:
        return dict(self.spec.get("tags") or {})

    @cached_property
    def description(self) -> str:
        return str(self.spec.get("description") or "")

    @cached_property
    def version(self) -> int:
        return int(self.history[-1]["version"]) if self.history else 1

    @cached_property
    def event_transform(self) -> dict[str, Any] | None:
        return self.spec["plan"].get("event_transform")

    @cached_property
    def inference_stages(self) -> list[dict[str, Any]]:
        inference = self.spec["plan"].get("inference") or {}
        return [*inference.get("before_aggregation", []), *inference.get("after_aggregation", [])]

    @cached_property
    def joins(self) -> list[dict[str, Any]]:
        """The view's join definitions (``Lookup`` and ``IntervalJoin`` specs), in order."""
        joins: list[dict[str, Any]] = self.spec["plan"].get("joins") or []
        return joins

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entities": self.entities,
            "window": self.window,
            "features": [f["name"] for f in self.features],
            "source": self.source,
            "owner": self.owner,
            "tags": self.tags,
            "description": self.description,
            "version": self.version,
            "updated": self.updated,
        }

    def detail(self) -> dict[str, Any]:
        """The definition as the lookup API shows it: summary, window, aggregations, transform
        reference and source hash, joins, inference stages, schema, ttl, stores and version history."""
        spec = self.spec
        return {
            **self.summary(),
            "spec_hash": self.spec_hash,
            "created": self.created,
            "timestamp_field": spec["timestamp_field"],
            "keys": spec["plan"]["keys"],
            "schema": spec["schema"],
            "ttl_s": spec["ttl_ms"] // 1000 if spec["ttl_ms"] else None,
            "online": spec["online"],
            "offline": spec["offline"],
            "function": spec["function"],
            "event_transform": self.event_transform,
            "aggregations": [
                {"feature": f["name"], "dtype": f["dtype"], "aggregation": aggregation_text(f["aggregation"])}
                for f in self.features
            ],
            "inference": spec["plan"].get("inference") or {},
            "joins": [{**join, "text": join_text(join)} for join in self.joins],
            "history": list(self.history),
            "definition": spec,
        }


@dataclass(frozen=True)
class FeatureRecord:
    """One output feature of a view."""

    view: str
    name: str
    dtype: str
    aggregation: str
    entities: tuple[str, ...]
    owner: str

    @property
    def qualified(self) -> str:
        return f"{self.view}:{self.name}"

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "entities": list(self.entities), "qualified": self.qualified}


class _FromSpec:
    """Owner, tags, description and the detail view of a record read from its stored definition."""

    spec: dict[str, Any]

    @property
    def owner(self) -> str:
        return str(self.spec.get("owner") or "")

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.spec.get("tags") or {})

    @property
    def description(self) -> str:
        return str(self.spec.get("description") or "")

    def summary(self) -> dict[str, Any]:
        raise NotImplementedError

    def detail(self) -> dict[str, Any]:
        return {**self.summary(), "definition": self.spec}


@dataclass(frozen=True)
class SourceRecord(_FromSpec):
    """A registered stream source (its history twin is a Feast ``FileSource``)."""

    name: str
    kind: str
    spec: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "history": self.spec.get("history"),
            "timestamp_field": self.spec.get("timestamp_field"),
            "owner": self.owner,
            "tags": self.tags,
            "description": self.description,
        }


@dataclass(frozen=True)
class EntityRecord(_FromSpec):
    """A registered entity and its join keys."""

    name: str
    join_keys: tuple[str, ...]
    spec: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "join_keys": list(self.join_keys),
            "dtype": self.spec.get("dtype"),
            "owner": self.owner,
            "tags": self.tags,
            "description": self.description,
        }


@dataclass(frozen=True)
class ModelRecord(_FromSpec):
    """A model a view scores with (``kind`` "model": id and handler from an inference stage) or a
    model set ``mlfs train`` recorded (``kind`` "model_set": one model per key, with versions)."""

    name: str
    kind: str
    spec: dict[str, Any]
    used_by: tuple[str, ...] = ()
    trained_from: str | None = None

    @property
    def owner(self) -> str:
        return ""

    @property
    def tags(self) -> dict[str, str]:
        return {}

    @property
    def description(self) -> str:
        if self.kind == "model_set":
            return f"{self.spec.get('estimator')} models per {self.spec.get('key')}"
        return str(self.spec.get("handler", ""))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "used_by": list(self.used_by),
            "trained_from": self.trained_from,
            "description": self.description,
        }
        if self.kind == "model_set":
            versions = self.spec.get("versions") or {}
            out["keys"] = len(versions)
            out["versions"] = sorted({v["version"] for vs in versions.values() for v in vs})
        else:
            out["versions"] = sorted(set(self.spec.get("versions", [])))
        return out


Record = ViewRecord | FeatureRecord | SourceRecord | EntityRecord | ModelRecord
R = TypeVar("R", ViewRecord, FeatureRecord, SourceRecord, EntityRecord, ModelRecord)


@dataclass(frozen=True)
class Page:
    """One page of a listing: the items, the total that matched, and where the next page starts."""

    items: list[dict[str, Any]]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.items)
        return end if end < self.total else None

    def to_json(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
            "next_offset": self.next_offset,
        }


def paginate(
    items: Sequence[Any],
    offset: int = 0,
    limit: int = 100,
    render: Callable[[Any], dict[str, Any]] | None = None,
) -> Page:
    """Items ``offset`` to ``offset + limit``; ``render`` turns each into JSON (only the page's)."""
    if offset < 0:
        raise RegistryLookupError("offset must be 0 or more", 400)
    if not 1 <= limit <= 1000:
        raise RegistryLookupError("limit must be between 1 and 1000", 400)
    page = items[offset : offset + limit]
    return Page([render(i) for i in page] if render else list(page), len(items), offset, limit)


@dataclass(frozen=True)
class Hit:
    """A search result."""

    kind: str
    name: str
    record: Any

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "summary": self.record.summary()}


def _model_specs(value: Any) -> Iterable[dict[str, Any]]:
    """Every model spec (a dict with an id and a handler) inside a stage's router spec."""
    if isinstance(value, dict):
        if "id" in value and "handler" in value:
            yield value
        else:
            for item in value.values():
                yield from _model_specs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _model_specs(item)


def _model_set_names(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        if value.get("kind") == "trained" and "name" in value:
            yield str(value["name"])
        for item in value.values():
            yield from _model_set_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from _model_set_names(item)


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _lower(*parts: str) -> str:
    return " ".join(parts).lower()


@dataclass
class Catalog:
    """A snapshot of the registry's MLFS objects with indexes for lookups."""

    project: str
    views: dict[str, ViewRecord] = field(default_factory=dict)
    sources: dict[str, SourceRecord] = field(default_factory=dict)
    entities: dict[str, EntityRecord] = field(default_factory=dict)
    model_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded_at: float = 0.0

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        """Derive features and models from the views and build the search texts."""
        self.features: list[FeatureRecord] = []
        models: dict[str, dict[str, Any]] = {}
        used: dict[str, set[str]] = {}
        for view in sorted(self.views.values(), key=lambda v: v.name):
            for f in view.features:
                self.features.append(
                    FeatureRecord(
                        view.name,
                        f["name"],
                        f["dtype"],
                        aggregation_text(f["aggregation"]),
                        tuple(view.entities),
                        view.owner,
                    )
                )
            for stage in view.inference_stages:
                for model in _model_specs(stage.get("model")):
                    entry = models.setdefault(model["id"], {**model, "versions": []})
                    entry["versions"].append(model.get("version"))
                    used.setdefault(model["id"], set()).add(view.name)
                for name in _model_set_names(stage.get("model")):
                    used.setdefault(name, set()).add(view.name)
        records = [
            ModelRecord(name, "model", spec, tuple(sorted(used.get(name, ()))))
            for name, spec in models.items()
            if name not in self.model_sets
        ]
        records += [
            ModelRecord(name, "model_set", spec, tuple(sorted(used.get(name, ()))), spec.get("view"))
            for name, spec in self.model_sets.items()
        ]
        self.models: dict[str, ModelRecord] = {m.name: m for m in sorted(records, key=lambda m: m.name)}
        self._view_text = {
            v.name: _lower(
                v.name,
                v.description,
                v.owner,
                _tags_text(v.tags),
                " ".join(f["name"] for f in v.features),
                v.source,
                " ".join(v.entities),
            )
            for v in self.views.values()
        }
        self._feature_names = {v.name: [f["name"].lower() for f in v.features] for v in self.views.values()}
        self._feature_text = [_lower(f.qualified, f.aggregation) for f in self.features]

    # --- listings ------------------------------------------------------------------------------

    def list_views(
        self,
        *,
        name: str | None = None,
        tag: str | None = None,
        owner: str | None = None,
        entity: str | None = None,
        source: str | None = None,
        feature: str | None = None,
    ) -> list[ViewRecord]:
        """Views matching every filter given: ``name`` and ``feature`` are substrings, ``tag`` is
        ``key`` or ``key=value``, the rest are exact."""
        checks: list[Callable[[ViewRecord], bool]] = []
        if name:
            needle = name.lower()
            checks.append(lambda v: needle in v.name.lower())
        if tag:
            key, _, value = tag.partition("=")
            checks.append(lambda v: key in v.tags and (not value or v.tags[key] == value))
        if owner:
            checks.append(lambda v: v.owner == owner)
        if entity:
            checks.append(lambda v: entity in v.entities)
        if source:
            checks.append(lambda v: v.source == source)
        if feature:
            needle_f = feature.lower()
            checks.append(lambda v: any(needle_f in f for f in self._feature_names[v.name]))
        return [v for _, v in sorted(self.views.items()) if all(check(v) for check in checks)]

    def list_features(self, *, name: str | None = None, view: str | None = None) -> list[FeatureRecord]:
        needle = (name or "").lower()
        return [f for f in self.features if needle in f.name.lower() and (view is None or f.view == view)]

    def list_sources(self) -> list[SourceRecord]:
        return [s for _, s in sorted(self.sources.items())]

    def list_entities(self) -> list[EntityRecord]:
        return [e for _, e in sorted(self.entities.items())]

    def list_models(self) -> list[ModelRecord]:
        return list(self.models.values())

    def listing(self, kind: str, **filters: Any) -> list[Record]:
        """``list_<kind>`` by name (``views``, ``features``, ``sources``, ``entities``, ``models``)."""
        if kind not in KINDS:
            raise RegistryLookupError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})", 400)
        given = {k: v for k, v in filters.items() if v}
        allowed = {
            "views": {"name", "tag", "owner", "entity", "source", "feature"},
            "features": {"name", "view"},
        }.get(kind, set())
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise RegistryLookupError(f"{kind} cannot be filtered by {', '.join(unknown)}", 400)
        method: Callable[..., Sequence[Record]] = getattr(self, f"list_{kind}")
        return list(method(**given))

    # --- single objects -------------------------------------------------------------------------

    def _get(self, kind: str, table: dict[str, R], name: str) -> R:
        if name in table:
            return table[name]
        raise RegistryLookupError(f"no registered {kind} named {name!r}{_did_you_mean(name, table)}")

    def view(self, name: str) -> ViewRecord:
        return self._get("view", self.views, name)

    def source(self, name: str) -> SourceRecord:
        return self._get("source", self.sources, name)

    def entity(self, name: str) -> EntityRecord:
        return self._get("entity", self.entities, name)

    def model(self, name: str) -> ModelRecord:
        return self._get("model", self.models, name)

    def feature(self, qualified: str) -> FeatureRecord:
        view_name, _, name = qualified.partition(":")
        view = self.view(view_name)
        for f in self.features:
            if f.view == view.name and f.name == name:
                return f
        hint = _did_you_mean(name, [f["name"] for f in view.features])
        raise RegistryLookupError(f"view {view.name!r} has no feature {name!r}{hint}")

    def get(self, kind: str, name: str) -> Record:
        getters: dict[str, Callable[[str], Record]] = {
            "views": self.view,
            "features": self.feature,
            "sources": self.source,
            "entities": self.entity,
            "models": self.model,
        }
        if kind not in getters:
            raise RegistryLookupError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})", 400)
        return getters[kind](name)

    # --- search ----------------------------------------------------------------------------------

    def search(self, query: str, kinds: Sequence[str] = KINDS) -> list[Hit]:
        """Every object whose name, description, owner, tags (or, for a view, its features, source
        and entities) contain ``query`` (case-insensitive), names that match best first."""
        if not query:
            raise RegistryLookupError("the search query is empty", 400)
        needle = query.strip().lower() or query.lower()  # only spaces: looked for as they are
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise RegistryLookupError(f"unknown kind {unknown[0]!r} (one of {', '.join(KINDS)})", 400)
        hits: list[tuple[int, str, str, Any]] = []

        def rank(name: str) -> int:
            lowered = name.lower()
            if lowered == needle:
                return 0
            return 1 if lowered.startswith(needle) else 2 if needle in lowered else 3

        if "views" in kinds:
            for name, text in self._view_text.items():
                if needle in text:
                    hits.append((rank(name), "view", name, self.views[name]))
        if "features" in kinds:
            for f, text in zip(self.features, self._feature_text, strict=True):
                if needle in text:
                    hits.append((rank(f.name), "feature", f.qualified, f))
        others: list[tuple[str, Iterable[SourceRecord | EntityRecord | ModelRecord]]] = [
            ("source", self.sources.values() if "sources" in kinds else ()),
            ("entity", self.entities.values() if "entities" in kinds else ()),
            ("model", self.models.values() if "models" in kinds else ()),
        ]
        for kind, records in others:
            for r in records:
                if needle in _lower(r.name, r.description, r.owner, _tags_text(r.tags)):
                    hits.append((rank(r.name), kind, r.name, r))
        order = {"view": 0, "feature": 1, "source": 2, "entity": 3, "model": 4}
        hits.sort(key=lambda h: (h[0], order[h[1]], h[2]))
        return [Hit(kind, name, record) for _, kind, name, record in hits]


def load_catalog(store: Any) -> Catalog:
    """Read the MLFS objects of ``store``'s project from its registry (file or SQL): the stored
    protos and JSON tags only, so nothing registered is imported or run."""
    registry = store.registry
    registry.refresh(store.project)
    return catalog_of(registry.proto(), store.project)


def read_catalog(settings: RepoSettings) -> Catalog:
    """``load_catalog`` of the repository's registry; a local registry file is read here, without
    importing Feast (``featurestore.feast_protos``), which takes seconds."""
    path = settings.registry_file
    if path is None:
        from featurestore.config import feast_store

        return load_catalog(feast_store(settings))
    registry = feast_proto("core.Registry_pb2").Registry()
    if path.is_file():
        registry.ParseFromString(path.read_bytes())
    return catalog_of(registry, settings.project)


def catalog_of(proto: Any, project: str) -> Catalog:
    """The MLFS objects of ``project`` in a Feast ``Registry`` message."""
    import time

    views: dict[str, ViewRecord] = {}
    for fv in proto.feature_views:
        tags = fv.spec.tags
        if fv.spec.project != project or tags.get(TAG_MANAGED) != "true" or TAG_SPEC not in tags:
            continue
        views[fv.spec.name] = ViewRecord(
            fv.spec.name,
            json.loads(tags[TAG_SPEC]),
            tags.get(TAG_SPEC_HASH, ""),
            _stamp(fv.meta.created_timestamp),
            _stamp(fv.meta.last_updated_timestamp),
            tuple(json.loads(tags.get(TAG_HISTORY, "[]"))),
        )
    sources: dict[str, SourceRecord] = {}
    for ds in proto.data_sources:
        tags = ds.tags
        kind = tags.get(TAG_KIND, "")
        if ds.project != project or tags.get(TAG_MANAGED) != "true" or not kind.endswith("_stream_source"):
            continue
        kind = kind.removesuffix("_stream_source")
        sources[ds.name] = SourceRecord(ds.name, kind, json.loads(tags[TAG_SPEC]))
    entities: dict[str, EntityRecord] = {}
    for en in proto.entities:
        tags = en.spec.tags
        if en.spec.project != project or tags.get(TAG_MANAGED) != "true":
            continue
        spec = json.loads(tags[TAG_SPEC]) if TAG_SPEC in tags else {"name": en.spec.name}
        entities[en.spec.name] = EntityRecord(en.spec.name, (en.spec.join_key,), spec)
    model_sets: dict[str, dict[str, Any]] = {}
    for fs in proto.feature_services:
        tags = fs.spec.tags
        if fs.spec.project == project and tags.get(TAG_KIND) == MODEL_SET_KIND and TAG_MODEL in tags:
            model_sets[fs.spec.name] = json.loads(tags[TAG_MODEL])
    return Catalog(project, views, sources, entities, model_sets, loaded_at=time.time())
