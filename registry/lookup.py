"""Reading MLFS views back from the Feast registry (``mlfs registry list | show``).

Lookups read only the stored JSON definitions; they never import or execute registered code.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from registry.feast_objects import TAG_MANAGED, TAG_SPEC, TAG_SPEC_HASH
from transforms.errors import MLFSError


@dataclass(frozen=True)
class ViewRecord:
    """A registered view as stored: its definition spec and its hash."""

    name: str
    spec: dict[str, Any]
    spec_hash: str

    @property
    def window(self) -> str:
        window = self.spec["plan"]["window"]
        kind = window["kind"]
        if kind == "lifetime":
            return "lifetime"
        size = _duration(window["size_ms"])
        if kind == "continuous":
            return f"sliding {size}"
        if kind == "tumbling":
            return f"tumbling {size}"
        return f"hopping {size} every {_duration(window['hop_ms'])}"

    @property
    def features(self) -> list[dict[str, Any]]:
        return list(self.spec["plan"]["features"])


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def describe_aggregation(spec: dict[str, Any]) -> str:
    args = [spec["column"]] if spec.get("column") else []
    args += [f"{k}={v}" for k, v in sorted(spec.items()) if k not in ("kind", "column")]
    return f"{spec['kind']}({', '.join(args)})"


def list_views(store: Any) -> list[ViewRecord]:
    """Every MLFS view in the registry, by name."""
    records = [
        ViewRecord(fv.name, json.loads(fv.tags[TAG_SPEC]), fv.tags.get(TAG_SPEC_HASH, ""))
        for fv in store.list_feature_views()
        if fv.tags.get(TAG_MANAGED) == "true" and TAG_SPEC in fv.tags
    ]
    return sorted(records, key=lambda r: r.name)


def get_view(store: Any, name: str) -> ViewRecord:
    """One registered view; the error suggests close names."""
    records = {r.name: r for r in list_views(store)}
    if name in records:
        return records[name]
    close = difflib.get_close_matches(name, list(records), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise MLFSError(f"no registered view named {name!r}{hint}")
