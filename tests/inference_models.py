"""Small real models the inference tests train themselves (no downloads): a torch regressor in double
precision and a scikit-learn classifier, saved to files the Beam model handlers load."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy
from sklearn.linear_model import LogisticRegression

from transforms.inference import Model

N_INPUTS = 3


class TinyRegressor(torch.nn.Module):
    """One hidden layer, float64 so a row's score does not depend on the batch it is scored in."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(N_INPUTS, hidden, dtype=torch.float64)
        self.out = torch.nn.Linear(hidden, 1, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def train_torch(path: Path, seed: int, steps: int = 60) -> Path:
    """Fit a ``TinyRegressor`` to a seed-specific linear target and save its state dict."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.rand(256, N_INPUTS, generator=generator, dtype=torch.float64)
    target = x @ torch.tensor([1.0 + seed, -2.0, 0.5], dtype=torch.float64) + 0.1 * seed
    model = TinyRegressor()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), target)
        loss.backward()
        optimiser.step()
    torch.save(model.state_dict(), path)
    return path


def torch_model(tmp: Path, name: str, seed: int, version: str = "1", **kwargs: Any) -> Model:
    path = train_torch(tmp / f"{name}-{version}.pt", seed)
    handler = PytorchModelHandlerTensor(state_dict_path=str(path), model_class=TinyRegressor, model_params={})
    return Model(name, handler, version, **kwargs)


def torch_predict(model: Model, inputs: list[float]) -> float:
    """The model's score for one input, computed directly (what an engine must reproduce)."""
    loaded = model.handler.load_model()
    with torch.no_grad():
        return float(loaded(torch.tensor([inputs], dtype=torch.float64))[0, 0])


def train_sklearn(path: Path, seed: int) -> Path:
    """Fit a logistic regression (label 1 when x0 + x1 is large) and pickle it."""
    rng = np.random.default_rng(seed)
    x = rng.random((400, 2)) * 10
    y = (x[:, 0] + x[:, 1] > 10).astype(int)
    classifier = LogisticRegression().fit(x, y)
    with path.open("wb") as f:
        pickle.dump(classifier, f)
    return path


def sklearn_model(tmp: Path, name: str, seed: int, version: str = "1") -> Model:
    path = train_sklearn(tmp / f"{name}-{version}.pkl", seed)
    return Model(name, SklearnModelHandlerNumpy(model_uri=str(path)), version)


def sklearn_predict(model: Model, inputs: list[float]) -> int:
    with open(model.handler._model_uri, "rb") as f:
        classifier = pickle.load(f)
    return int(classifier.predict(np.array([inputs]))[0])


def as_tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)
