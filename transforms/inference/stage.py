"""``Enrich``: a model-inference stage of a ``UnifiedTransformer``, run on each event row before
aggregation or on each feature row after it. It says which model(s) score a row, how a row becomes
model input, and which fields the prediction becomes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transforms.inference.models import Model
from transforms.inference.routing import Router, Single

Row = dict[str, Any]
OutputMap = Callable[[Any], Any]


@dataclass(frozen=True)
class Batching:
    """How rows are batched for a model: at most ``max_batch_size`` per ``run_inference`` call;
    a streaming job waits at most ``max_wait_ms`` for a batch to fill."""

    max_batch_size: int = 64
    max_wait_ms: int = 100

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")


class Enrich:
    """Score rows with a model and add the prediction as fields.

    ``model`` is a Beam ``ModelHandler`` (then the model's id is the stage name), a ``Model``, or a
    router (``KeyedModels``, ``ABTest``, ``Shadow``). ``inputs`` turns a row into one model input
    (a tensor, a numpy array, a dict of tensors for keyed-tensor handlers). ``outputs`` names the
    fields: a field name (the prediction is a scalar or a one-element array), a list of names (one
    per element of the prediction), or ``{field: function(prediction)}``. With ``record_model`` the
    row also gets ``<name>_model_id`` and ``<name>_model_version``.
    """

    def __init__(
        self,
        name: str,
        model: Any,
        *,
        inputs: Callable[[Row], Any],
        outputs: str | Sequence[str] | Mapping[str, OutputMap],
        batching: Batching | None = None,
        record_model: bool = True,
    ) -> None:
        if not name.isidentifier():
            raise ValueError(f"an Enrich stage name must be an identifier, got {name!r}")
        if not callable(inputs):
            raise TypeError(f"Enrich {name!r}: inputs must be a function of the row")
        self.name = name
        self.router: Router = _router(name, model)
        self.inputs = inputs
        self.outputs = _outputs(name, outputs)
        self.batching = batching or Batching()
        self.record_model = record_model

    @property
    def output_fields(self) -> list[str]:
        """Every field this stage adds to a row."""
        fields = list(self.outputs)
        if self.record_model:
            fields += [self.model_id_field, self.model_version_field]
        if self.has_shadow:
            fields += [self.shadow_field(f) for f in self.outputs]
            if self.record_model:
                fields += [self.shadow_field("model_id"), self.shadow_field("model_version")]
        return fields

    @property
    def model_id_field(self) -> str:
        return f"{self.name}_model_id"

    @property
    def model_version_field(self) -> str:
        return f"{self.name}_model_version"

    @property
    def has_shadow(self) -> bool:
        return self.router.spec()["kind"] == "shadow"

    def shadow_field(self, field: str) -> str:
        return f"{self.name}_shadow_{field}"

    def functions(self) -> list[Any]:
        """The user code this stage calls (engines ship it to workers that cannot import it)."""
        found: list[Any] = [self.inputs, *(fn for fn in self.outputs.values() if fn is not None)]
        router: Any = self.router
        key = getattr(router, "key", None)
        if callable(key):
            found.append(key)
        for model in router.models():
            model_class = getattr(model.handler, "_model_class", None)
            if model_class is not None:
                found.append(model_class)
        return found

    def spec(self) -> dict[str, Any]:
        from transforms.plan import code_reference

        outputs = {name: None if fn is None else code_reference(fn) for name, fn in self.outputs.items()}
        return {
            "name": self.name,
            "model": self.router.spec(),
            "inputs": code_reference(self.inputs),
            "outputs": outputs,
            "fields": self.output_fields,
            "batching": {
                "max_batch_size": self.batching.max_batch_size,
                "max_wait_ms": self.batching.max_wait_ms,
            },
        }

    def __repr__(self) -> str:
        return f"Enrich({self.name!r}, outputs={list(self.outputs)})"


class Cascade:
    """Stages run in order, each seeing the fields the earlier ones added (model A's output feeds
    model B). A plain list of stages means the same; ``Cascade`` names the pattern."""

    def __init__(self, *stages: Enrich) -> None:
        if not stages:
            raise ValueError("Cascade needs at least one stage")
        self.stages = stages


StageList = Enrich | Cascade | Iterable[Enrich | Cascade] | None


def flatten_stages(stages: StageList) -> tuple[Enrich, ...]:
    """A transformer's stages in run order (a cascade is its stages in order)."""
    if stages is None:
        return ()
    if isinstance(stages, (Enrich, Cascade)):
        stages = [stages]
    flat: list[Enrich] = []
    for stage in stages:
        if isinstance(stage, Cascade):
            flat.extend(stage.stages)
        elif isinstance(stage, Enrich):
            flat.append(stage)
        else:
            raise TypeError(f"an inference stage must be Enrich(...) or Cascade(...), got {stage!r:.80}")
    return tuple(flat)


def _router(name: str, model: Any) -> Router:
    if isinstance(model, Model):
        return Single(model)
    if all(callable(getattr(model, m, None)) for m in ("assign", "models", "spec")):
        return model
    return Single(Model(name, model))


def _outputs(name: str, outputs: Any) -> dict[str, OutputMap | None]:
    """Field -> how it is taken from the prediction (``None``: the prediction itself, or element i
    of it for the i-th of a list of names)."""
    if isinstance(outputs, str):
        fields: dict[str, OutputMap | None] = {outputs: None}
    elif isinstance(outputs, Mapping):
        fields = dict(outputs)
        bad = [f for f, fn in fields.items() if not callable(fn)]
        if bad:
            raise TypeError(f"Enrich {name!r}: output {bad[0]!r} must map to a function of the prediction")
    else:
        fields = {f: None for f in outputs}
    if not fields or not all(isinstance(f, str) and f.isidentifier() for f in fields):
        raise ValueError(f"Enrich {name!r}: outputs must name one or more fields (identifiers)")
    return fields
