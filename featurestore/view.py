"""``@stream_feature_view``: declare a view and capture its transformer without running a job."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from featurestore.definitions import Entity, Field, StreamSource
from transforms.errors import DefinitionError
from transforms.plan import (
    RESERVED_COLUMNS,
    FeatureContext,
    Runner,
    TransformPlan,
    ViewInfo,
    code_reference,
)
from transforms.timeutil import duration_ms
from transforms.transformer import UnifiedTransformer
from transforms.usercode import USER_CODE_ERRORS

MODES = ("flink", "spark", "beam")
KEY_TYPES = ("String", "Int64", "Int32")

ViewFunction = Callable[[FeatureContext, Any], Any]


class SymbolicInput:
    """The stand-in ``inputs`` a view function receives while its definition is captured."""

    def __init__(self, view: str) -> None:
        self._view = view

    def __getattr__(self, name: str) -> Any:
        raise DefinitionError(
            self._view,
            f"the view function used inputs.{name} before UnifiedTransformer(...).run(inputs); "
            "engine-specific code cannot be captured",
        )


@dataclass
class StreamFeatureView:
    """A registered view: its declaration, its function and the captured plan."""

    name: str
    function: ViewFunction
    entities: tuple[Entity, ...]
    schema: tuple[Field, ...]
    source: StreamSource
    timestamp_field: str
    ttl: timedelta
    online: bool
    offline: bool
    tags: dict[str, str] = field(default_factory=dict)
    owner: str = ""
    description: str = ""
    mode: str = "flink"
    plan: TransformPlan = field(init=False)

    @property
    def key_fields(self) -> tuple[Field, ...]:
        keys = {k for e in self.entities for k in e.join_keys}
        return tuple(f for f in self.schema if f.name in keys)

    @property
    def feature_fields(self) -> tuple[Field, ...]:
        skip = {k for e in self.entities for k in e.join_keys} | {self.timestamp_field}
        return tuple(f for f in self.schema if f.name not in skip)

    def info(self) -> ViewInfo:
        by_name = {f.name: f for f in self.schema}
        keys = tuple((k, by_name[k].dtype) for e in self.entities for k in e.join_keys)
        return ViewInfo(
            name=self.name,
            keys=keys,
            timestamp_field=self.timestamp_field,
            features=tuple((f.name, f.dtype) for f in self.feature_fields),
            event_time_range_ms=self.source.event_time_range_ms,
        )

    def context(self, runner: Runner, **options: Any) -> FeatureContext:
        return FeatureContext(runner=runner, view=self.info(), options=options)

    def run(self, inputs: Any, runner: Runner = Runner.REFERENCE, **options: Any) -> Any:
        """Call the view function on ``inputs`` under ``runner`` (engine options as keywords)."""
        return self.function(self.context(runner, **options), inputs)

    def capture(self) -> None:
        """Call the function symbolically and keep the plan of the transformer it builds."""
        try:
            out = self.function(self.context(Runner.PLAN), SymbolicInput(self.name))
        except DefinitionError:
            raise
        except USER_CODE_ERRORS as err:
            raise DefinitionError(
                self.name,
                f"calling the view function to capture its definition failed: {type(err).__name__}: {err}",
            ) from err
        if not isinstance(out, UnifiedTransformer):
            raise DefinitionError(
                self.name,
                "the view function must return UnifiedTransformer(ctx, ...).run(inputs), "
                f"got {type(out).__name__}",
            )
        try:
            self.plan = out.plan()
        except DefinitionError:
            raise
        except ValueError as err:
            raise DefinitionError(self.name, str(err)) from err

    def spec(self) -> dict[str, Any]:
        """The whole definition as JSON-able data (code referenced by name and hash only)."""
        return {
            "name": self.name,
            "entities": [e.name for e in self.entities],
            "schema": [{"name": f.name, "dtype": str(f.dtype)} for f in self.schema],
            "source": self.source.name,
            "timestamp_field": self.timestamp_field,
            "ttl_ms": duration_ms(self.ttl),
            "online": self.online,
            "offline": self.offline,
            "tags": dict(self.tags),
            "owner": self.owner,
            "description": self.description,
            "mode": self.mode,
            "function": code_reference(self.function),
            "plan": self.plan.spec(),
        }


def _check(view: str, ok: bool, message: str) -> None:
    if not ok:
        raise DefinitionError(view, message)


def stream_feature_view(
    *,
    entities: Sequence[Entity],
    schema: Sequence[Field],
    source: StreamSource,
    ttl: timedelta = timedelta(0),
    online: bool = True,
    offline: bool = True,
    timestamp_field: str | None = None,
    tags: dict[str, str] | None = None,
    owner: str = "",
    description: str = "",
    mode: str = "flink",
    name: str | None = None,
) -> Callable[[ViewFunction], StreamFeatureView]:
    """Declare a stream feature view around a function that returns a ``UnifiedTransformer``.

    The function is called once with a symbolic input, so the registry knows the view's window,
    aggregations and transforms without running a job; errors name the view and the problem.
    """

    def wrap(function: ViewFunction) -> StreamFeatureView:
        view = name or function.__name__
        _check(view, bool(entities), "missing entity: a view needs at least one Entity")
        for entity in entities:
            _check(
                view,
                isinstance(entity, Entity),
                f"missing entity: {entity!r:.60} is not an Entity",
            )
        _check(view, isinstance(source, StreamSource), f"source {source!r:.60} is not a stream source")
        _check(view, isinstance(ttl, timedelta) and ttl >= timedelta(0), "ttl must be a timedelta >= 0")
        _check(view, mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        fields = tuple(schema)
        for f in fields:
            _check(view, isinstance(f, Field), f"schema entries must be Field(...), got {f!r:.60}")
        names = [f.name for f in fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check(view, not dupes, f"schema field {dupes[0] if dupes else ''!r} is declared twice")
        reserved = sorted(RESERVED_COLUMNS & set(names))
        _check(view, not reserved, f"schema field {reserved[0] if reserved else ''!r} is reserved")
        by_name = {f.name: f for f in fields}
        for entity in entities:
            for key in entity.join_keys:
                _check(
                    view,
                    key in by_name,
                    f"missing entity join key {key!r} (entity {entity.name!r}) in the schema",
                )
                _check(
                    view,
                    by_name[key].dtype.name in KEY_TYPES,
                    f"join key {key!r} must be one of {', '.join(KEY_TYPES)}, not {by_name[key].dtype}",
                )
        time_field = timestamp_field or source.timestamp_field
        _check(
            view,
            time_field == source.timestamp_field,
            f"timestamp_field {time_field!r} differs from source {source.name!r}'s "
            f"timestamp_field {source.timestamp_field!r}",
        )
        result = StreamFeatureView(
            name=view,
            function=function,
            entities=tuple(entities),
            schema=fields,
            source=source,
            timestamp_field=time_field,
            ttl=ttl,
            online=online,
            offline=offline,
            tags=dict(tags or {}),
            owner=owner,
            description=description or (function.__doc__ or "").strip(),
            mode=mode,
        )
        _check(view, bool(result.feature_fields), "the schema declares no feature fields")
        result.capture()
        return result

    return wrap
