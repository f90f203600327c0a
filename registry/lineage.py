"""Lineage: how registered objects connect. Source -> event transform -> view -> online and offline
stores; view -> the views that look it up; source -> the views that join it (interval joins);
models -> the views that score with them; view -> model sets trained on it -> views that score
with those models."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from registry.catalog import Catalog, RegistryLookupError


@dataclass
class Graph:
    """Nodes (``kind:name`` ids) and directed edges, upstream to downstream."""

    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)

    def node(self, kind: str, name: str, label: str | None = None) -> str:
        node_id = f"{kind}:{name}"
        self.nodes.setdefault(node_id, {"id": node_id, "kind": kind, "name": name, "label": label or name})
        return node_id

    def edge(self, upstream: str, downstream: str, label: str) -> None:
        self.edges.append((upstream, downstream, label))

    def around(self, start: str) -> Graph:
        """Everything upstream of ``start`` and everything downstream of it."""
        keep = {start}
        for forward in (True, False):
            queue = deque([start])
            while queue:
                current = queue.popleft()
                for a, b, _ in self.edges:
                    nxt = b if forward and a == current else a if not forward and b == current else None
                    if nxt is not None and nxt not in keep:
                        keep.add(nxt)
                        queue.append(nxt)
        sub = Graph({n: self.nodes[n] for n in sorted(keep)})
        sub.edges = [e for e in self.edges if e[0] in keep and e[1] in keep]
        return sub

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes.values()),
            "edges": [{"from": a, "to": b, "label": label} for a, b, label in self.edges],
        }


def lineage_graph(catalog: Catalog) -> Graph:
    """The whole registry as one graph."""
    graph = Graph()
    for source in catalog.list_sources():
        graph.node("source", source.name, f"{source.name} ({source.kind})")
    for view in catalog.list_views():
        view_id = graph.node("view", view.name)
        upstream = graph.node("source", view.source)
        transform = view.event_transform
        if transform is not None:
            ref = transform.get("ref") or transform.get("expression") or "transform"
            digest = transform.get("source_sha256", "")
            label = f"{ref} sha256:{digest[:12]}" if digest else str(ref)
            transform_id = graph.node("transform", f"{view.name}/{ref}", label)
            graph.edge(upstream, transform_id, "events")
            upstream = transform_id
        graph.edge(upstream, view_id, "events")
        for join in view.joins:
            if join["kind"] == "lookup":
                graph.edge(
                    graph.node("view", join["view"]),
                    view_id,
                    f"looked up as of each event ({', '.join(join['features'])})",
                )
            else:
                graph.edge(graph.node("source", join["source"]), view_id, f"{join['how']} interval join")
        spec = view.spec
        if spec.get("online"):
            graph.edge(view_id, graph.node("store", "online", "online store"), "latest row per key")
        if spec.get("offline"):
            graph.edge(view_id, graph.node("store", "offline", "offline store (Parquet)"), "history")
    for model in catalog.list_models():
        model_id = graph.node("model", model.name, f"{model.name} ({model.kind.replace('_', ' ')})")
        if model.trained_from:
            graph.edge(graph.node("view", model.trained_from), model_id, "trained on")
        for view_name in model.used_by:
            graph.edge(model_id, graph.node("view", view_name), "scores")
    return graph


def resolve(catalog: Catalog, name: str) -> str:
    """The node id of ``name`` (``kind:name``, or a bare view, source or model name)."""
    kind, sep, rest = name.partition(":")
    if sep and kind in ("view", "source", "model", "entity"):
        getattr(catalog, kind)(rest)
        return name
    for kind, table in (("view", catalog.views), ("source", catalog.sources), ("model", catalog.models)):
        if name in table:
            return f"{kind}:{name}"
    catalog.view(name)  # raises with close matches
    raise RegistryLookupError(f"no registered object named {name!r}")


def lineage(catalog: Catalog, name: str) -> Graph:
    """The objects ``name`` depends on and those that depend on it (an entity: every view keyed by it)."""
    graph = lineage_graph(catalog)
    start = resolve(catalog, name)
    if start.startswith("entity:"):
        entity = start.split(":", 1)[1]
        keyed = [v.name for v in catalog.list_views(entity=entity)]
        result = Graph()
        result.node("entity", entity)
        for view_name in keyed:
            part = graph.around(f"view:{view_name}")
            result.nodes.update(part.nodes)
            result.edges += [e for e in part.edges if e not in result.edges]
            result.edge(f"entity:{entity}", f"view:{view_name}", "keys")
        return result
    return graph.around(start)
