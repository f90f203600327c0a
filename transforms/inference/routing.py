"""Which model scores a row: one model, a model per key (with point-in-time versions), an A/B split
by a stable hash of the entity key, or a served model with a shadow. All declarative: the registry
records them as data, and every engine routes a row the same way."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from transforms.inference.models import Model

KeyOf = str | Callable[[dict[str, Any]], Any]


class RoutingError(Exception):
    """No model can score this row (for example no version of its key's model was live yet)."""


@dataclass(frozen=True)
class Assignment:
    """The model whose output a row gets, and the one that scores it in the shadow (if any)."""

    served: Model
    shadow: Model | None = None


class Router(Protocol):
    """Assigns each row (with its event or feature time) to the models that score it."""

    @property
    def max_loaded(self) -> int | None: ...

    def assign(self, row: dict[str, Any], time_ms: int) -> Assignment: ...

    def models(self) -> list[Model]: ...

    def spec(self) -> dict[str, Any]: ...


def key_value(key: KeyOf, row: dict[str, Any]) -> Any:
    """The routing key of a row: a field's value, or what a function of the row returns."""
    return row.get(key) if isinstance(key, str) else key(row)


def key_spec(key: KeyOf) -> Any:
    from transforms.plan import code_reference

    return key if isinstance(key, str) else code_reference(key)


def stable_fraction(value: Any, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``value``'s JSON text: the same key lands on the same side of an
    A/B split in every engine, process and run."""
    text = json.dumps(value, sort_keys=True, default=str)
    digest = hashlib.sha256(f"{salt}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def live_version(versions: Sequence[Model], time_ms: int) -> Model | None:
    """The newest version live at ``time_ms`` (a version without ``live_from`` is live from the
    start); ``None`` when none was live yet."""
    live = [m for m in versions if m.live_from_ms is None or m.live_from_ms <= time_ms]
    if not live:
        return None
    return max(live, key=lambda m: (-1 if m.live_from_ms is None else m.live_from_ms, m.version))


@dataclass(frozen=True)
class Single:
    """One model scores every row."""

    model: Model
    max_loaded: int | None = None

    def assign(self, row: dict[str, Any], time_ms: int) -> Assignment:
        return Assignment(self.model)

    def models(self) -> list[Model]:
        return [self.model]

    def spec(self) -> dict[str, Any]:
        return {"kind": "single", "model": self.model.spec()}


class KeyedModels:
    """A model per key (an entity attribute, a segment, a model name), at most ``max_loaded`` in
    memory per worker. A key may map to several versions; each row is scored by the version live at
    its time. ``default`` scores keys without a model of their own; without it such rows are
    dead-lettered."""

    def __init__(
        self,
        key: KeyOf,
        models: Mapping[Any, Model | Sequence[Model]],
        *,
        max_loaded: int | None = None,
        default: Model | None = None,
    ) -> None:
        if not models:
            raise ValueError("KeyedModels needs at least one model")
        if max_loaded is not None and max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.key = key
        self.versions: dict[Any, tuple[Model, ...]] = {
            k: (v,) if isinstance(v, Model) else tuple(v) for k, v in models.items()
        }
        for k, versions in self.versions.items():
            if not versions or not all(isinstance(m, Model) for m in versions):
                raise TypeError(f"KeyedModels: key {k!r} must map to a Model or a list of Models")
        self.max_loaded = max_loaded
        self.default = default

    def assign(self, row: dict[str, Any], time_ms: int) -> Assignment:
        key = key_value(self.key, row)
        versions = self.versions.get(key)
        if versions is None:
            if self.default is None:
                raise RoutingError(f"no model for key {key!r}")
            return Assignment(self.default)
        model = live_version(versions, time_ms)
        if model is None:
            raise RoutingError(f"no version of the model for key {key!r} was live at this row's time")
        return Assignment(model)

    def models(self) -> list[Model]:
        found = [m for versions in self.versions.values() for m in versions]
        return found + ([self.default] if self.default is not None else [])

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "keyed",
            "key": key_spec(self.key),
            "max_loaded": self.max_loaded,
            "models": {str(k): [m.spec() for m in v] for k, v in sorted(self.versions.items(), key=str)},
            "default": None if self.default is None else self.default.spec(),
        }


@dataclass(frozen=True)
class ABTest:
    """``fraction`` of keys (by a stable hash of the key, so sticky per key) go to ``challenger``,
    the rest to ``control``."""

    control: Model
    challenger: Model
    fraction: float
    key: KeyOf
    salt: str = ""
    max_loaded: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"ABTest fraction must be between 0 and 1, got {self.fraction}")

    def assign(self, row: dict[str, Any], time_ms: int) -> Assignment:
        key = key_value(self.key, row)
        if key is None:
            raise RoutingError("the A/B key is null")
        challenger = stable_fraction(key, self.salt) < self.fraction
        return Assignment(self.challenger if challenger else self.control)

    def models(self) -> list[Model]:
        return [self.control, self.challenger]

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "ab_test",
            "control": self.control.spec(),
            "challenger": self.challenger.spec(),
            "fraction": self.fraction,
            "key": key_spec(self.key),
            "salt": self.salt,
        }


@dataclass(frozen=True)
class Shadow:
    """Both models score every row; ``served``'s output is the stage's output and ``shadow``'s is
    recorded beside it (in ``<stage>_shadow_<field>`` fields) for comparison."""

    served: Model
    shadow: Model
    max_loaded: int | None = None

    def assign(self, row: dict[str, Any], time_ms: int) -> Assignment:
        return Assignment(self.served, self.shadow)

    def models(self) -> list[Model]:
        return [self.served, self.shadow]

    def spec(self) -> dict[str, Any]:
        return {"kind": "shadow", "served": self.served.spec(), "shadow": self.shadow.spec()}
