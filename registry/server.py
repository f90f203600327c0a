"""``mlfs registry serve``: the registry lookup API over HTTP (FastAPI) and the browser page.

Reads answer from an in-memory ``Catalog`` that is reloaded when the registry changes; they never
import registered code. The one write, ``POST /api/apply`` (register the served repository again),
needs ``Authorization: Bearer <token>`` with the token from the ``MLFS_REGISTRY_TOKEN`` environment
variable; with the variable unset the server is read-only.
"""

from __future__ import annotations

import gc
import hmac
import inspect
import os
import threading
import time
from importlib import resources
from typing import Any, Literal, get_args

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from featurestore.config import RepoSettings, feast_store
from registry.catalog import KINDS, Catalog, Hit, RegistryLookupError, load_catalog, paginate
from registry.lineage import lineage
from registry.status import view_status

TOKEN_ENV = "MLFS_REGISTRY_TOKEN"
DEFAULT_REFRESH_S = 2.0


class CatalogHolder:
    """The current catalog, reloaded in the background (looked for at most every ``refresh_s``)
    when the registry has changed, so no request waits for a reload."""

    def __init__(self, settings: RepoSettings, refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self.settings = settings
        self.refresh_s = refresh_s
        self.store = feast_store(settings)  # read only: writes go through a store of their own
        self._checking = threading.Lock()
        self._reloading = threading.Lock()
        self.reload()
        self._checked = time.monotonic()
        self.failure: str | None = None  # why the last look at the registry failed (None: it answered)

    def _registry_version(self) -> Any:
        if self.settings.registry_type == "file":
            try:
                return self.settings.registry_path.stat().st_mtime_ns
            except OSError:
                return None
        last_updated = getattr(self.store.registry, "_get_last_updated_metadata", None)
        return last_updated(self.store.project) if last_updated else time.monotonic()

    def get(self) -> Catalog:
        if time.monotonic() - self._checked >= self.refresh_s and self._checking.acquire(blocking=False):
            threading.Thread(target=self._refresh, daemon=True).start()
        return self._catalog

    def _refresh(self) -> None:
        try:
            version = self._registry_version()
            if version != self._version:
                self.reload(version)
            self.failure = None
        except Exception as err:  # the registry's store is away: keep serving the catalog held
            self.failure = (
                f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            )
        finally:
            self._checked = time.monotonic()
            self._checking.release()

    def reload(self, version: Any = None) -> None:
        with self._reloading:
            catalog = load_catalog(self.store)
            self._version = version if version is not None else self._registry_version()
            self._catalog = catalog
            # A large catalog is millions of long-lived objects: keep the cyclic GC from rescanning
            # them (a full collection over 10k views takes about 0.4 s, every lookup's p99 otherwise).
            gc.collect()
            gc.freeze()


class ErrorBody(BaseModel):
    """Every error's body."""

    error: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "bad request: a parameter is missing, of the wrong type or out of range",
        401: "no bearer token",
        403: "the token is not valid, or the server is read-only",
        404: "no such object",
        503: "not ready: the registry's store did not answer",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}


# The filters each listing takes (``Catalog.listing`` applies them).
FILTERS: dict[str, tuple[str, ...]] = {
    "views": ("name", "tag", "owner", "entity", "source", "feature"),
    "features": ("name", "view"),
    "sources": (),
    "entities": (),
    "models": (),
}
Kind = Literal["views", "features", "sources", "entities", "models"]
assert set(FILTERS) == set(KINDS) == set(get_args(Kind))


def create_app(settings: RepoSettings, refresh_s: float = DEFAULT_REFRESH_S) -> Any:
    """The FastAPI application serving ``settings``' registry. Its OpenAPI document is true: every
    status a route answers is documented (``tests/test_registry_api.py`` checks it with
    schemathesis)."""
    holder = CatalogHolder(settings, refresh_s)
    app = FastAPI(
        title="MLFS registry",
        description="Look up views, features, sources, entities and models, their lineage and status.",
        version="1",
    )

    @app.exception_handler(RegistryLookupError)
    async def lookup_failed(request: Request, err: RegistryLookupError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in err.errors()
        )
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = str(err.detail)
        parts = request.url.path.split("/")
        if err.status_code == 404 and len(parts) > 2 and parts[1] == "api" and parts[2] not in KINDS:
            message = f"unknown kind {parts[2]!r} (one of {', '.join(KINDS)})"
        return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

    offset_query = Query(0, ge=0, description="how many items to skip")

    def only(request: Request, allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(request.query_params) - set(allowed))
        if unknown:
            raise RegistryLookupError(f"unknown parameter(s): {', '.join(unknown)}", 400)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the server answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses=_errors(503))
    def readyz() -> JSONResponse:
        """Readiness: a catalog is loaded and the registry's store answered the last look (made at
        most every refresh interval; a failed look keeps the catalog held, and is 503)."""
        catalog = holder.get()
        body = {"project": catalog.project, "views": len(catalog.views), "loaded_at": catalog.loaded_at}
        if holder.failure is not None:
            return JSONResponse({"error": f"registry not reachable: {holder.failure}"}, status_code=503)
        return JSONResponse({"status": "ready", **body})

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        catalog = holder.get()
        return {"project": catalog.project, "views": len(catalog.views), "loaded_at": catalog.loaded_at}

    @app.get("/api/search", responses=_errors(400))
    def search(
        request: Request,
        q: str = Query(
            ...,
            min_length=1,
            description="substring of a name, description, owner, tag or feature",
        ),
        kind: list[Kind] = Query(default=list(KINDS)),  # noqa: B008
        offset: int = offset_query,
        limit: int = Query(50, ge=1, le=1000),
    ) -> dict[str, Any]:
        only(request, ("q", "kind", "offset", "limit"))
        return paginate(holder.get().search(q, list(kind)), offset, limit, Hit.to_json).to_json()

    @app.get("/api/lineage/{name}", responses=_errors(404))
    def lineage_of(name: str) -> dict[str, Any]:
        return lineage(holder.get(), name).to_json()

    @app.get("/api/views/{name}/status", responses=_errors(404))
    def status(name: str) -> dict[str, Any]:
        holder.get().view(name)
        return view_status(settings, name)

    def add_listing(kind: str) -> None:
        allowed = (*FILTERS[kind], "offset", "limit")
        filters = {
            name: Query(None, description=f"only {kind} whose {name} matches") for name in FILTERS[kind]
        }

        def listing(request: Request, offset: int, limit: int, **given: str | None) -> Any:
            only(request, allowed)
            records = holder.get().listing(kind, **given)
            return paginate(records, offset, limit, lambda r: r.summary()).to_json()

        # What FastAPI reads: the page parameters and each filter as a query parameter of its own.
        parameter = inspect.Parameter
        listing.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                parameter("request", parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
                parameter("offset", parameter.KEYWORD_ONLY, default=offset_query, annotation=int),
                parameter("limit", parameter.KEYWORD_ONLY, default=Query(100, ge=1, le=1000), annotation=int),
                *(
                    parameter(name, parameter.KEYWORD_ONLY, default=default, annotation=str | None)
                    for name, default in filters.items()
                ),
            ]
        )
        app.get(f"/api/{kind}", responses=_errors(400), name=f"list_{kind}")(listing)

        def detail(name: str) -> dict[str, Any]:
            record = holder.get().get(kind, name)
            return record.detail() if hasattr(record, "detail") else record.summary()

        app.get(f"/api/{kind}/{{name}}", responses=_errors(404), name=f"get_{kind}")(detail)

    for kind in KINDS:
        add_listing(kind)

    @app.post("/api/apply", responses=_errors(401, 403))
    def apply(request: Request) -> JSONResponse:
        expected = os.environ.get(TOKEN_ENV)
        if not expected:
            return JSONResponse(
                {"error": f"this server is read-only (start it with {TOKEN_ENV} set to allow writes)"},
                status_code=403,
            )
        given = request.headers.get("authorization", "")
        if not given.lower().startswith("bearer "):
            return JSONResponse(
                {"error": "writes need an 'Authorization: Bearer <token>' header"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given[7:].strip().encode(), expected.encode()):
            return JSONResponse({"error": "the token is not valid"}, status_code=403)
        from featurestore.repo import load_repo
        from registry.apply import apply_repo

        plan = apply_repo(load_repo(settings.repo_path))
        holder.reload()
        return JSONResponse({"changes": [c.line() for c in plan.changes if c.action != "unchanged"]})

    page = resources.files("registry").joinpath("static")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page.joinpath("index.html").read_text()

    @app.get("/static/{name}", responses=_errors(404))
    def static(name: str) -> Response:
        types = {".js": "text/javascript", ".css": "text/css"}
        suffix = os.path.splitext(name)[1]
        target = page.joinpath(name)
        if suffix not in types or "/" in name or not target.is_file():
            return JSONResponse({"error": f"no static file {name!r}"}, status_code=404)
        return Response(target.read_text(), media_type=types[suffix])

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: Any) -> dict[str, Any]:
    """FastAPI's document, less the 422 it lists for every route with parameters: MLFS answers a
    bad parameter with 400 (``bad_query``), which the routes document."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
    return dict(app.openapi_schema)


def serve(settings: RepoSettings, host: str, port: int, refresh_s: float = DEFAULT_REFRESH_S) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    app = create_app(settings, refresh_s)
    writes = "writes with a bearer token" if os.environ.get(TOKEN_ENV) else f"read-only ({TOKEN_ENV} unset)"
    print(f"registry of project {settings.project} on http://{host}:{port}/ ({writes})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
