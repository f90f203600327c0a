"""The two join forms of DESIGN §2b, stated once: what a joined event holds and which partners match.

Both run on a view's events after decoding, timing and lateness on their own source, in the order
the transformer lists them, before the event transform, which sees the joined event.

* ``Lookup(view, features, on, prefix, exclusive)``: enrichment by another view as of the event's
  time. The event gets ``prefix + feature`` for each named feature: the values of the other view's
  latest row for the same key with feature time ``<= t`` (``< t`` when ``exclusive``), nulls when
  there is none. The key is each ``on`` field of the event coerced to the other view's key type
  (``transforms.dtypes.coerce``): a null or missing field matches nothing, a value that does not
  coerce makes the event a ``wrong_type`` dead letter.
* ``IntervalJoin(source, on, within=(before, after), how, fields, prefix)``: pairs an event ``a``
  with every event ``b`` of ``source`` whose ``on`` fields equal ``a``'s and whose time is in
  ``[a.t - before, a.t + after]``. The joined event is ``a``'s fields plus ``prefix + f`` for each
  of ``b``'s ``fields`` and ``prefix + <b's time field>`` (b's time), at time ``max(a.t, b.t)``;
  with ``how="left"``, an ``a`` without partners gives one event with those fields null at
  ``a.t + after``. Join values are strings or integers, equal in type and value; a null or missing
  one matches nothing, another type makes the event a ``wrong_type`` dead letter on its own source.
  An ``a`` event's outcome is that of its joined events taken together, as for an event transform
  that returns several rows: dead-lettered whole when any of them is, filtered when it has none
  (an inner join without partners) or all are filtered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from transforms.errors import DefinitionError
from transforms.timeutil import duration_ms

JOIN_HOWS = ("inner", "left")


def _mapping(owner: str, on: Mapping[str, str] | Sequence[str]) -> tuple[tuple[str, str], ...]:
    pairs = tuple((f, f) for f in on) if not isinstance(on, Mapping) else tuple(on.items())
    if not pairs or not all(isinstance(a, str) and a and isinstance(b, str) and b for a, b in pairs):
        raise DefinitionError(None, f"{owner}: on= must name at least one field pair, got {on!r:.80}")
    return pairs


class Lookup:
    """Enrich each event with another view's features as of the event's time (DESIGN §2b)."""

    kind = "lookup"

    def __init__(
        self,
        view: Any,
        features: Sequence[str],
        on: Mapping[str, str] | Sequence[str],
        prefix: str = "",
        exclusive: bool = False,
    ) -> None:
        name = view if isinstance(view, str) else getattr(view, "name", None)
        if not isinstance(name, str) or not name:
            raise DefinitionError(None, f"Lookup: view must be a feature view or its name, got {view!r:.80}")
        self.view = name
        if isinstance(features, str) or not features or not all(isinstance(f, str) for f in features):
            raise DefinitionError(None, f"Lookup of {name!r}: features= must list feature names")
        self.features = tuple(features)
        self.on = _mapping(f"Lookup of {name!r}", on)  # (this event's field, the other view's key)
        self.prefix = prefix
        self.exclusive = bool(exclusive)

    @property
    def added_fields(self) -> tuple[str, ...]:
        """The fields the lookup adds to an event."""
        return tuple(self.prefix + f for f in self.features)

    def includes(self, row_ms: int, event_ms: int) -> bool:
        """Whether a row of the other view at ``row_ms`` is visible to an event at ``event_ms``."""
        return row_ms < event_ms if self.exclusive else row_ms <= event_ms

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "view": self.view,
            "features": list(self.features),
            "on": dict(self.on),
            "prefix": self.prefix,
            "exclusive": self.exclusive,
        }


class IntervalJoin:
    """Pair each event with the events of another source with the same key within a time interval
    (DESIGN §2b)."""

    kind = "interval_join"

    def __init__(
        self,
        source: Any,
        on: Mapping[str, str] | Sequence[str],
        within: tuple[timedelta, timedelta],
        how: str = "inner",
        fields: Sequence[str] = (),
        prefix: str | None = None,
    ) -> None:
        name = getattr(source, "name", None)
        time_field = getattr(source, "timestamp_field", None)
        if not isinstance(name, str) or not isinstance(time_field, str):
            raise DefinitionError(None, f"IntervalJoin: source must be a stream source, got {source!r:.80}")
        self.source = source
        owner = f"IntervalJoin with {name!r}"
        self.on = _mapping(owner, on)  # (this event's field, the other source's field)
        if not (isinstance(within, tuple) and len(within) == 2) or not all(
            isinstance(w, timedelta) and w >= timedelta(0) for w in within
        ):
            raise DefinitionError(None, f"{owner}: within= must be (before, after) timedeltas >= 0")
        self.before_ms, self.after_ms = (duration_ms(w) for w in within)
        if how not in JOIN_HOWS:
            raise DefinitionError(None, f"{owner}: how must be one of {', '.join(JOIN_HOWS)}, got {how!r}")
        self.how = how
        if isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
            raise DefinitionError(None, f"{owner}: fields= must list field names")
        self.fields = tuple(fields)
        self.prefix = f"{name}_" if prefix is None else prefix

    @property
    def source_name(self) -> str:
        name: str = self.source.name
        return name

    @property
    def time_field(self) -> str:
        """The other source's time field (the joined event holds it under the prefix)."""
        field: str = self.source.timestamp_field
        return field

    @property
    def added_fields(self) -> tuple[str, ...]:
        """The fields the join adds to an event: the other event's ``fields``, then its time."""
        return tuple(self.prefix + f for f in (*self.fields, self.time_field))

    def matches(self, a_ms: int, b_ms: int) -> bool:
        """Whether an event of the other source at ``b_ms`` partners an event at ``a_ms``."""
        return a_ms - self.before_ms <= b_ms <= a_ms + self.after_ms

    @staticmethod
    def joined_ms(a_ms: int, b_ms: int) -> int:
        """The joined event's time."""
        return max(a_ms, b_ms)

    def unmatched_ms(self, a_ms: int) -> int:
        """The time of a left join's event without a partner."""
        return a_ms + self.after_ms

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source_name,
            "on": dict(self.on),
            "within_ms": [self.before_ms, self.after_ms],
            "how": self.how,
            "fields": list(self.fields),
            "prefix": self.prefix,
        }


Join = Lookup | IntervalJoin


def check_joins(view: str, joins: Sequence[Any], timestamp_field: str) -> tuple[Join, ...]:
    """A transformer's ``joins=[...]``, checked: each a ``Lookup`` or ``IntervalJoin``, no two adding
    the same field, none adding the time field."""
    checked: list[Join] = []
    added: dict[str, str] = {}
    for join in joins:
        if not isinstance(join, (Lookup, IntervalJoin)):
            raise DefinitionError(view, f"joins must be Lookup(...) or IntervalJoin(...), got {join!r:.80}")
        owner = join.view if isinstance(join, Lookup) else join.source_name
        chained = [field for field, _ in join.on if field in added]
        if chained:
            raise DefinitionError(
                view,
                f"the join with {owner!r} matches on {chained[0]!r}, which the join with "
                f"{added[chained[0]]!r} adds; joins match on the event's own fields",
            )
        for name in join.added_fields:
            if name == timestamp_field:
                raise DefinitionError(view, f"the join with {owner!r} would replace the time field {name!r}")
            if name in added:
                raise DefinitionError(
                    view,
                    f"the joins with {added[name]!r} and {owner!r} both add field {name!r}; "
                    "give one a prefix",
                )
            added[name] = owner
        checked.append(join)
    return tuple(checked)
