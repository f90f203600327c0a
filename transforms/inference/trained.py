"""Models trained per key by ``mlfs train``: the model directory's index, and ``TrainedModels``, the
router that scores each row with its key's model version live at the row's time.

A training run over feature rows before time T saves, for every key, a version live from T: a row
is never scored by a model trained on data from its own future (point-in-time model versions).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from transforms.inference.models import Model
from transforms.inference.routing import Assignment, KeyOf, RoutingError, key_spec, key_value, live_version

INDEX = "index.json"


@dataclass(frozen=True)
class TrainedVersion:
    """One saved model: the key it serves, its version, when it went live and where it lives."""

    key: str
    version: str
    live_from: str  # ISO time
    path: str  # relative to the model set's directory
    rows: int


@dataclass
class ModelSetIndex:
    """What a model set's ``index.json`` records (the registry holds the same record)."""

    name: str
    view: str
    key: str
    features: list[str]
    label: str
    estimator: str
    versions: dict[str, list[TrainedVersion]]

    @staticmethod
    def read(directory: Path) -> ModelSetIndex:
        data = json.loads((directory / INDEX).read_text())
        versions = {k: [TrainedVersion(**v) for v in vs] for k, vs in data.pop("versions").items()}
        return ModelSetIndex(**data, versions=versions)

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{INDEX}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        tmp.replace(directory / INDEX)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["versions"] = {k: [asdict(v) for v in vs] for k, vs in sorted(self.versions.items())}
        return data

    def add(self, version: TrainedVersion) -> None:
        """Record ``version``, replacing a version of the same name for its key (a re-run)."""
        kept = [v for v in self.versions.get(version.key, []) if v.version != version.version]
        self.versions[version.key] = sorted([*kept, version], key=lambda v: v.live_from)


def load_sklearn_handler(path: Path) -> Any:
    from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy

    return SklearnModelHandlerNumpy(model_uri=str(path))


class TrainedModels:
    """Route each row to the model ``mlfs train`` saved for its key, in the version live at the
    row's time. ``model_dir`` is the directory ``mlfs train`` wrote (use an absolute path, for
    example one relative to the repository's ``__file__``); the index is read when scoring starts,
    so a view can be defined before its models are trained. ``key`` defaults to the training key."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        *,
        key: KeyOf | None = None,
        max_loaded: int | None = None,
        default: Model | None = None,
    ) -> None:
        self.name = name
        self.directory = str(Path(model_dir) / name)
        self.key = key
        self.max_loaded = max_loaded
        self.default = default
        self._lock = threading.Lock()
        self._resolved: tuple[KeyOf, dict[str, tuple[Model, ...]]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_resolved"] = None  # workers read the index themselves
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _models(self) -> tuple[KeyOf, dict[str, tuple[Model, ...]]]:
        with self._lock:
            if self._resolved is None:
                directory = Path(self.directory)
                if not (directory / INDEX).is_file():
                    raise RoutingError(f"no models trained yet for {self.name!r} (no {directory / INDEX})")
                index = ModelSetIndex.read(directory)
                versions = {
                    key: tuple(
                        Model(
                            f"{self.name}/{key}",
                            load_sklearn_handler(directory / v.path),
                            v.version,
                            live_from=datetime.fromisoformat(v.live_from),
                        )
                        for v in trained
                    )
                    for key, trained in index.versions.items()
                }
                self._resolved = (self.key if self.key is not None else index.key, versions)
            return self._resolved

    def assign(self, row: dict[str, Any], time_ms: int) -> Assignment:
        key, versions = self._models()
        value = key_value(key, row)
        found = versions.get(str(value))
        if found is None:
            if self.default is None:
                raise RoutingError(f"no model trained for key {value!r}")
            return Assignment(self.default)
        model = live_version(found, time_ms)
        if model is None:
            raise RoutingError(
                f"no model for key {value!r} was live at this row's time (first: {found[0].live_from})"
            )
        return Assignment(model)

    def models(self) -> list[Model]:
        try:
            _, versions = self._models()
        except RoutingError:
            return []
        return [m for found in versions.values() for m in found]

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "trained",
            "name": self.name,
            "model_dir": self.directory,
            "key": None if self.key is None else key_spec(self.key),
            "max_loaded": self.max_loaded,
        }
