"""Models as a pipeline sees them: a Beam ``ModelHandler`` with an id and a version, and the
worker-side pool that loads them (at most N at a time, least recently used out first)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from transforms.timeutil import parse_event_time
from transforms.usercode import USER_CODE_ERRORS


@dataclass(frozen=True)
class Model:
    """One model version: a Beam ``ModelHandler`` (``load_model()`` / ``run_inference()``), the id
    and version every scored row records, and optionally when the version went live (point-in-time
    scoring picks, for a row at time t, the newest version live at t)."""

    id: str
    handler: Any
    version: str = "1"
    live_from: datetime | None = None

    def __post_init__(self) -> None:
        missing = [m for m in ("load_model", "run_inference") if not callable(getattr(self.handler, m, None))]
        if missing:
            raise TypeError(
                f"model {self.id!r}: the handler must be a Beam ModelHandler "
                f"(no {', '.join(missing)} on {type(self.handler).__name__})"
            )
        if not self.id or not self.version:
            raise ValueError("a model needs a non-empty id and version")

    @property
    def live_from_ms(self) -> int | None:
        return None if self.live_from is None else parse_event_time(self.live_from)

    @property
    def label(self) -> str:
        return f"{self.id}@{self.version}"

    def spec(self) -> dict[str, Any]:
        """What the registry records: names and the handler's configuration, never the model."""
        handler = self.handler
        config = {
            name: str(getattr(handler, attr))
            for name, attr in (
                ("state_dict_path", "_state_dict_path"),
                ("model_uri", "_model_uri"),
                ("torch_script_model_path", "_torch_script_model_path"),
            )
            if getattr(handler, attr, None)
        }
        return {
            "id": self.id,
            "version": self.version,
            "live_from": None if self.live_from is None else self.live_from.isoformat(),
            "handler": f"{type(handler).__module__}.{type(handler).__qualname__}",
            **({"config": config} if config else {}),
        }


class ModelLoadError(Exception):
    """A model could not be loaded; the rows it should score are dead-lettered."""


@dataclass
class PoolStats:
    """How a pool has behaved: loads (reloads included), evictions and the most models held."""

    loads: int = 0
    evictions: int = 0
    peak_loaded: int = 0
    load_failures: int = 0


@dataclass
class ModelPool:
    """Loaded models of one worker, at most ``max_loaded`` at a time (least recently used out)."""

    max_loaded: int | None = None
    stats: PoolStats = field(default_factory=PoolStats)

    def __post_init__(self) -> None:
        if self.max_loaded is not None and self.max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def is_loaded(self, model: Model) -> bool:
        return model.label in self._loaded

    def get(self, model: Model) -> Any:
        """The loaded model, loading it (and evicting the least recently used) when needed."""
        with self._lock:
            if model.label in self._loaded:
                self._loaded.move_to_end(model.label)
                return self._loaded[model.label]
            while self.max_loaded is not None and len(self._loaded) >= self.max_loaded:
                self._loaded.popitem(last=False)
                self.stats.evictions += 1
            try:
                loaded = model.handler.load_model()
            except USER_CODE_ERRORS as err:  # a handler may raise anything while loading
                self.stats.load_failures += 1
                raise ModelLoadError(
                    f"loading model {model.label} failed: {type(err).__name__}: {err}"
                ) from err
            self.stats.loads += 1
            self._loaded[model.label] = loaded
            self.stats.peak_loaded = max(self.stats.peak_loaded, len(self._loaded))
            return loaded


_POOLS: dict[str, ModelPool] = {}
_POOLS_LOCK = threading.Lock()


def worker_pool(name: str, max_loaded: int | None) -> ModelPool:
    """The pool named ``name`` in this process, so a worker loads each model once across batches
    and tasks (Spark reuses Python workers; Flink keeps one per operator)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(name)
        if pool is None or pool.max_loaded != max_loaded:
            pool = _POOLS[name] = ModelPool(max_loaded)
        return pool
