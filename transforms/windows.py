"""The window rules: which events a value covers and when a key's value can change.

Every window is stated over integer epoch milliseconds as a half-open interval ``[lo, hi)``:

* ``Sliding(size)`` (continuous): the value at ``t`` covers ``(t - size, t]`` = ``[t - size + 1, t + 1)``;
  it can change at each event time ``e`` and at ``e + size`` when that event leaves.
* ``Sliding(size, hop)`` / ``Tumbling(size)`` (hopping): window ends ``b`` are multiples of ``hop``
  since the epoch and the value at ``b`` covers ``[b - size, b)``; it can change at the first end after
  an event (``floor(e / hop) * hop + hop``) and at that end plus ``size`` (when the event leaves).
* ``Lifetime()`` (no window): the value at ``t`` covers every event at or before ``t``; it can change at
  each event time.

Engines emit one row per key at every such time up to ``LAST_ROW_MS`` (9999-12-31T23:59:59.999Z,
the last time a datetime, Parquet file or Feast store holds; no one can ask for a value after it);
see ``transforms.engines.reference``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from transforms.timeutil import MAX_TIME_MS, duration_ms

NEG_INF = -(2**63)


LAST_ROW_MS = MAX_TIME_MS  # no row is emitted after this time


class Window:
    """Base class of the three window kinds."""

    kind: str = ""

    def emission_times(self, event_ms: int) -> tuple[int, ...]:
        """The times at which an event at ``event_ms`` changes its key's value and a row is
        emitted (``change_times`` up to ``LAST_ROW_MS``)."""
        return tuple(t for t in self.change_times(event_ms) if t <= LAST_ROW_MS)

    def change_times(self, event_ms: int) -> tuple[int, ...]:
        """The times at which an event at ``event_ms`` can change its key's value: its aligned time
        plus each of ``change_offsets``."""
        aligned = self.aligned(event_ms)
        return tuple(aligned + offset for offset in self.change_offsets())

    def aligned(self, event_ms: int) -> int:
        """The first time an event at ``event_ms`` counts (hopping: the first window end after it)."""
        return event_ms

    def change_offsets(self) -> tuple[int, ...]:
        """Where, after its aligned time, an event changes its key's value (entering, then leaving)."""
        raise NotImplementedError

    def leave_offset_ms(self) -> int | None:
        """How long after its aligned time an event leaves the window and changes its key's value
        again (None: never); streaming engines emit that row from a marker or a timer."""
        offsets = self.change_offsets()
        return offsets[1] if len(offsets) > 1 else None

    def frame(self) -> tuple[int | None, int]:
        """``bounds`` as offsets from ``t``: ``(lo - t, hi - t)``, ``lo - t`` None when unbounded. Engines
        lower this one rule to their frames."""
        raise NotImplementedError

    def lookback_ms(self) -> int | None:
        """How long before ``t`` an event can still decide the value or a row at or after ``t``
        (None: any time before): the frame's reach plus, for hopping windows, an end's alignment."""
        low, _ = self.frame()
        if low is None:
            return None
        return max(-low, *self.change_offsets()) + self.aligned(0)  # aligning moves a time by <= a hop

    def bounds(self, t: int) -> tuple[int, int]:
        """The half-open ``[lo, hi)`` event-time interval the value at ``t`` aggregates."""
        low, high = self.frame()
        return (NEG_INF if low is None else t + low, t + high)

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Sliding(Window):
    """A continuous window of ``size``, or a hopping one when ``hop`` is given."""

    size: timedelta
    hop: timedelta | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.size, timedelta) or self.size <= timedelta(0):
            raise ValueError(f"window size must be a positive timedelta, got {self.size!r}")
        duration_ms(self.size)
        if self.hop is not None:
            if not isinstance(self.hop, timedelta) or self.hop <= timedelta(0):
                raise ValueError(f"window hop must be a positive timedelta, got {self.hop!r}")
            if duration_ms(self.size) % duration_ms(self.hop):
                raise ValueError(f"window size {self.size} is not a multiple of its hop {self.hop}")

    @property
    def kind(self) -> str:  # type: ignore[override]
        if self.hop is None:
            return "continuous"
        return "tumbling" if self.hop == self.size else "hopping"

    @property
    def size_ms(self) -> int:
        return duration_ms(self.size)

    @property
    def hop_ms(self) -> int | None:
        return None if self.hop is None else duration_ms(self.hop)

    def aligned(self, event_ms: int) -> int:
        hop = self.hop_ms
        return event_ms if hop is None else (event_ms // hop) * hop + hop

    def change_offsets(self) -> tuple[int, ...]:
        return (0, self.size_ms)

    def frame(self) -> tuple[int | None, int]:
        if self.hop is None:
            return (-self.size_ms + 1, 1)
        return (-self.size_ms, 0)

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "size_ms": self.size_ms}
        if self.hop is not None:
            out["hop_ms"] = self.hop_ms
        return out


def Tumbling(size: timedelta) -> Sliding:
    """Back-to-back windows of ``size``: ``Sliding(size, hop=size)``."""
    return Sliding(size, size)


@dataclass(frozen=True)
class Lifetime(Window):
    """No window: every event of the key up to the value's time."""

    kind: ClassVar[str] = "lifetime"  # type: ignore[misc]

    def change_offsets(self) -> tuple[int, ...]:
        return (0,)

    def frame(self) -> tuple[int | None, int]:
        return (None, 1)

    def spec(self) -> dict[str, Any]:
        return {"kind": "lifetime"}


def window_from_spec(spec: dict[str, Any]) -> Window:
    """Rebuild a window from ``Window.spec()`` (registry round trip)."""
    if spec["kind"] == "lifetime":
        return Lifetime()
    size = timedelta(milliseconds=spec["size_ms"])
    hop = spec.get("hop_ms")
    return Sliding(size, None if hop is None else timedelta(milliseconds=hop))
