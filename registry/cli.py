"""``mlfs registry list | show | search | lineage | serve``: lookups as aligned tables or JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from registry.catalog import KINDS, Catalog, ViewRecord, read_catalog
from transforms.errors import MLFSError


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def add_commands(commands: Any, repo_option: Callable[[argparse.ArgumentParser], None]) -> None:
    registry = commands.add_parser("registry", help="look up registered objects, lineage and status")
    lookups = registry.add_subparsers(dest="lookup", required=True, metavar="LOOKUP")

    listing = lookups.add_parser("list", help="registered views (or features, sources, entities, models)")
    listing.add_argument(
        "kind", nargs="?", default="views", choices=KINDS, help="what to list (default: views)"
    )
    listing.add_argument("--name", help="name contains this")
    listing.add_argument("--tag", help="views with tag KEY or KEY=VALUE")
    listing.add_argument("--owner", help="views of this owner")
    listing.add_argument("--entity", help="views keyed by this entity")
    listing.add_argument("--source", help="views reading this source")
    listing.add_argument("--feature", help="views with a feature whose name contains this")
    listing.add_argument("--view", help="features of this view")

    show = lookups.add_parser("show", help="one object's definition (a view, by default) and status")
    show.add_argument("name", help="the name (a feature as VIEW:FEATURE)")
    show.add_argument("--kind", default="views", choices=KINDS, help="what NAME is (default: views)")

    search = lookups.add_parser("search", help="find anything whose name, description, owner or tags match")
    search.add_argument("query")
    search.add_argument("--kind", action="append", choices=KINDS, help="only these kinds (repeatable)")

    lineage = lookups.add_parser("lineage", help="what an object depends on and what depends on it")
    lineage.add_argument("name", help="a view, source or model name, or KIND:NAME")

    serve = lookups.add_parser("serve", help="serve the lookup API and the registry page over HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    serve.add_argument(
        "--refresh", type=float, default=2.0, metavar="SECONDS", help="how often to look for registry changes"
    )
    for sub in (listing, show, search, lineage, serve):
        if sub is not serve:
            sub.add_argument("--json", action="store_true", help="print JSON")
        repo_option(sub)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _cell(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    return "-" if value in (None, "") else str(value)


COLUMNS = {
    "views": [
        ("VIEW", "name"),
        ("ENTITIES", "entities"),
        ("WINDOW", "window"),
        ("FEATURES", "features"),
        ("SOURCE", "source"),
        ("OWNER", "owner"),
        ("VERSION", "version"),
    ],
    "features": [
        ("FEATURE", "qualified"),
        ("TYPE", "dtype"),
        ("AGGREGATION", "aggregation"),
        ("ENTITIES", "entities"),
    ],
    "sources": [("SOURCE", "name"), ("KIND", "kind"), ("HISTORY", "history"), ("OWNER", "owner")],
    "entities": [("ENTITY", "name"), ("JOIN KEYS", "join_keys"), ("TYPE", "dtype"), ("OWNER", "owner")],
    "models": [
        ("MODEL", "name"),
        ("KIND", "kind"),
        ("VERSIONS", "versions"),
        ("TRAINED ON", "trained_from"),
        ("USED BY", "used_by"),
    ],
}


def _list(catalog: Catalog, args: argparse.Namespace) -> int:
    filters = {k: getattr(args, k) for k in ("name", "tag", "owner", "entity", "source", "feature", "view")}
    items = [r.summary() for r in catalog.listing(args.kind, **filters)]
    if args.json:
        _print_json(items)
    elif not items:
        print(f"No {args.kind} found" + (" (run `mlfs apply`)." if not catalog.views else "."))
    else:
        if args.kind == "views":  # the table shows how many features, JSON names them
            items = [{**item, "features": len(item["features"])} for item in items]
        columns = COLUMNS[args.kind]
        rows = [tuple(h for h, _ in columns)]
        rows += [tuple(_cell(item.get(key)) for _, key in columns) for item in items]
        print(table(rows))
    return 0


def _show_view(record: ViewRecord, status: dict[str, Any]) -> None:
    detail = record.detail()
    transform = detail["event_transform"]
    stages = [f"{s['name']} ({s['model']['kind']})" for s in record.inference_stages]
    backfill = status["backfill"]
    stream = status["stream"]
    lines = [
        f"view:        {record.name} (version {record.version})",
        f"description: {record.description or '-'}",
        f"entities:    {', '.join(record.entities)} (keys: {', '.join(k['name'] for k in detail['keys'])})",
        f"source:      {record.source} (time field {detail['timestamp_field']})",
        f"window:      {record.window}",
        "transform:   "
        + (f"{transform['ref']} sha256:{transform['source_sha256'][:12]}" if transform else "-"),
        f"function:    {detail['function']['ref']} sha256:{detail['function']['source_sha256'][:12]}",
        f"inference:   {', '.join(stages) or '-'}",
        f"joins:       {'; '.join(j['text'] for j in detail['joins']) or '-'}",
        f"ttl:         {detail['ttl_s']}s" if detail["ttl_s"] else "ttl:         none",
        f"stores:      {'online ' if detail['online'] else ''}{'offline' if detail['offline'] else ''}",
        f"owner:       {record.owner or '-'}",
        f"tags:        {_cell(record.tags)}",
        "backfill:    "
        + (
            f"{backfill['engine']} up to {backfill['end']} ({backfill['offline_rows']} rows)"
            if backfill
            else "never"
        ),
        "stream:      "
        + (f"{stream['state']} ({stream['counts']['input']} events in)" if stream else "not streamed"),
        f"dead letters: {status['dead_letters']['records']}",
        "features:",
    ]
    print("\n".join(lines))
    rows = [("  NAME", "TYPE", "AGGREGATION")]
    rows += [(f"  {a['feature']}", a["dtype"], a["aggregation"]) for a in detail["aggregations"]]
    print(table(rows))
    if record.history:
        print("versions:")
        rows = [("  VERSION", "APPLIED", "CHANGES")]
        rows += [
            (f"  {h['version']}", h.get("applied_at") or "-", h.get("changes") or "-") for h in record.history
        ]
        print(table(rows))


def _show(catalog: Catalog, args: argparse.Namespace, settings: Any) -> int:
    from registry.status import view_status

    record = catalog.get(args.kind, args.name)
    if args.kind == "views":
        assert isinstance(record, ViewRecord)
        status = view_status(settings, record.name)
        if args.json:
            _print_json({**record.detail(), "status": status})
        else:
            _show_view(record, status)
        return 0
    data = record.detail() if hasattr(record, "detail") else record.summary()
    if args.json:
        _print_json(data)
    else:
        for key, value in data.items():
            if key != "definition":
                print(f"{key + ':':<14}{_cell(value)}")
    return 0


def _search(catalog: Catalog, args: argparse.Namespace) -> int:
    if not args.query.strip():
        raise MLFSError("the search query is empty")
    hits = [hit.to_json() for hit in catalog.search(args.query, args.kind or KINDS)]
    if args.json:
        _print_json(hits)
    elif not hits:
        print(f"Nothing matches {args.query!r}.")
    else:
        rows = [("KIND", "NAME", "ABOUT")]
        for hit in hits:
            about = hit["summary"].get("description") or hit["summary"].get("aggregation") or ""
            rows.append((hit["kind"], hit["name"], about))
        print(table(rows))
    return 0


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _lineage(catalog: Catalog, args: argparse.Namespace) -> int:
    from registry.lineage import lineage

    graph = lineage(catalog, args.name)
    if args.json:
        _print_json(graph.to_json())
        return 0
    labels = {n: _short(data["label"]) for n, data in graph.nodes.items()}
    rows = [("FROM", "", "TO", "HOW")]
    for a, b, how in graph.edges:
        rows.append((f"{a.split(':')[0]} {labels[a]}", "->", f"{b.split(':')[0]} {labels[b]}", how))
    print(table(rows))
    return 0


def run(args: argparse.Namespace) -> int:
    from featurestore.config import load_settings

    settings = load_settings(args.repo)
    if args.lookup == "serve":
        from registry.server import serve

        serve(settings, args.host, args.port, args.refresh)
        return 0
    catalog = read_catalog(settings)
    if args.lookup == "list":
        return _list(catalog, args)
    if args.lookup == "show":
        return _show(catalog, args, settings)
    if args.lookup == "search":
        return _search(catalog, args)
    return _lineage(catalog, args)
