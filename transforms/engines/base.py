"""The one interface every engine implements, and the one table of engines.

An engine lowers a ``TransformPlan``; the rules it lowers live on the semantic types (``Window``,
``Aggregation``, ``Lateness``, ``EventCounts``), not in the engine. Like Beam's ``ModelHandler``, the
interface is small: ``run`` compiles the plan over the engine's own kind of input (an iterable, an
Arrow table, a Spark DataFrame, a Beam PCollection) and returns its own kind of result;
``run_table`` runs it over a bounded table of raw events and collects an ``EngineResult``, which is
how ``mlfs verify`` and the conformance tests compare every engine with the reference.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from transforms.errors import EngineUnavailable
from transforms.events import DeadLetter, EventCounts
from transforms.plan import FeatureContext, Runner, TransformPlan

if TYPE_CHECKING:
    import pyarrow as pa

    from transforms.joining import JoinInputs, LookupTable


@dataclass
class EngineResult:
    """Feature rows (dicts with the keys, features and ``event_timestamp``), dead letters, counts."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: EventCounts = field(default_factory=EventCounts)
    source_counts: dict[str, EventCounts] = field(default_factory=dict)  # an interval join's other sources


class Engine(ABC):
    """One engine: a thin compiler of the plan."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, plan: TransformPlan, inputs: Any, ctx: FeatureContext) -> Any:
        """``plan`` over ``inputs`` of this engine's kind (what ``UnifiedTransformer.run`` calls);
        options come as ``ctx.options``."""

    def run_table(
        self, plan: TransformPlan, events: pa.Table, joins: JoinInputs | None = None
    ) -> EngineResult:
        """``plan`` over a bounded table of raw events (event columns, or JSON lines in one column
        ``stage1.LINE``), collected; a view with joins reads ``joins``."""
        raise EngineUnavailable(f"the {self.name} engine does not run a bounded table of events")

    def feature_table(
        self, plan: TransformPlan, events: pa.Table, joins: JoinInputs | None = None
    ) -> pa.Table | None:
        """``run_table``'s feature rows as an Arrow table, where the engine holds them so (None:
        it does not; take ``run_table``'s rows)."""
        return None


def lookup_rows(
    engine: Engine, plan: TransformPlan, events: pa.Table, joins: JoinInputs | None
) -> LookupTable:
    """A view's feature rows over ``events`` as another view's lookups read them, on ``engine``
    (kept in Arrow where the engine can: ``Engine.feature_table``)."""
    from transforms.joining import LookupTable

    table = engine.feature_table(plan, events, joins)
    if table is not None:
        return LookupTable.of(plan, table)
    return LookupTable.of(plan, engine.run_table(plan, events, joins).rows)


@dataclass(frozen=True)
class EngineEntry:
    """Where an engine lives and what it serves, known without importing it (Spark and Flink are
    slow to import)."""

    name: str
    module: str  # defines ``ENGINE``, the ``Engine``
    backfill: str | None = None  # the module whose ``backfill_view`` runs ``mlfs backfill --engine``
    verifies: bool = False  # ``mlfs verify --engines`` may name it


ENGINES: tuple[EngineEntry, ...] = (
    EngineEntry("reference", "transforms.engines.reference", "backfill.reference_backfill", True),
    EngineEntry("embedded", "transforms.engines.embedded", "backfill.embedded_backfill", True),
    EngineEntry("spark", "transforms.engines.spark", "backfill.spark_backfill", True),
    EngineEntry("flink", "transforms.engines.flink", None, True),
    EngineEntry("beam", "transforms.engines.beam", None, False),
)
BACKFILL_ENGINES = tuple(e.name for e in ENGINES if e.backfill)
VERIFY_ENGINES = tuple(e.name for e in ENGINES if e.verifies)


def engine_entry(name: str) -> EngineEntry:
    """The table's entry for ``name``."""
    for entry in ENGINES:
        if entry.name == name:
            return entry
    raise EngineUnavailable(f"unknown engine {name!r} (choose from {', '.join(e.name for e in ENGINES)})")


def get_engine(runner: Runner | str) -> Engine:
    """The engine named ``runner``, imported on first use."""
    if runner == Runner.PLAN:
        raise EngineUnavailable("the plan run only captures a view's definition; it runs no engine")
    engine: Engine = importlib.import_module(engine_entry(str(runner)).module).ENGINE
    return engine


def backfill_module(name: str) -> Any:
    """The module whose ``backfill_view`` runs ``mlfs backfill --engine name``."""
    entry = engine_entry(name)
    if entry.backfill is None:
        raise EngineUnavailable(
            f"the {name} engine does not backfill (choose from {', '.join(BACKFILL_ENGINES)})"
        )
    return importlib.import_module(entry.backfill)
