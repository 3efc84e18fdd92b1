"""The classifier of ``classifier_fd``: a NumPy MLP (ReLU hidden layers, softmax output), its
training (cross-entropy, Adam, seeded minibatches) and its safetensors file.

Weights follow the torch ``nn.Linear`` layout, ``weight`` (out, in) and ``bias`` (out,), under
the names ``hidden.<i>.weight``, ``hidden.<i>.bias`` (``i`` from 0) and ``output.weight``,
``output.bias``; they are stored as float32.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from toolkit.errors import ToolkitError, UsageError
from toolkit.interfaces import Batch

#: The key of the JSON metadata inside the safetensors header.
METADATA_KEY = "classifier_fd"
FORMAT_VERSION = 1
#: Adam's moment decays and epsilon (the usual values; the learning rate is an option).
BETAS, EPS = (0.9, 0.999), 1e-8


class MLP:
    """``x`` (N, D) float -> logits (N, K), the last hidden layer's activations being the features."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = {name: np.asarray(value, np.float32) for name, value in weights.items()}
        self.depth = sum(1 for name in self.weights if name.startswith("hidden.") and name.endswith(".weight"))

    @classmethod
    def initialise(cls, sizes: tuple[int, ...], rng: np.random.Generator) -> "MLP":
        """He-normal weights and zero biases for layer sizes ``(inputs, *hidden, classes)``."""
        names = [f"hidden.{i}" for i in range(len(sizes) - 2)] + ["output"]
        weights = {}
        for name, fan_in, fan_out in zip(names, sizes[:-1], sizes[1:]):
            weights[f"{name}.weight"] = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
            weights[f"{name}.bias"] = np.zeros(fan_out)
        return cls(weights)

    @property
    def sizes(self) -> tuple[int, ...]:
        """``(inputs, *hidden, classes)``."""
        layers = [self.weights[f"hidden.{i}.weight"] for i in range(self.depth)] + [self.weights["output.weight"]]
        return (layers[0].shape[1], *(w.shape[0] for w in layers))

    def _hidden(self, x: np.ndarray) -> list[np.ndarray]:
        """The activations of every hidden layer, after the ReLU."""
        activations = []
        h = np.asarray(x, np.float32).reshape(len(x), -1)
        for i in range(self.depth):
            h = np.maximum(h @ self.weights[f"hidden.{i}.weight"].T + self.weights[f"hidden.{i}.bias"], 0.0)
            activations.append(h)
        return activations

    def features(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """The last hidden layer's activations (N, hidden[-1]), in batches."""
        return np.concatenate([self._hidden(x[i:i + batch_size])[-1] for i in range(0, len(x), batch_size)]
                              or [np.zeros((0, self.sizes[-2]), np.float32)])

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = self._hidden(x)[-1]
        return h @ self.weights["output.weight"].T + self.weights["output.bias"]

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        predictions = np.concatenate([self.logits(x[i:i + 4096]).argmax(axis=1) for i in range(0, len(x), 4096)])
        return float(np.mean(predictions == np.asarray(y)))

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean softmax cross-entropy on ``(x, y)`` and its gradient with respect to every weight."""
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        hidden = self._hidden(x)
        logits = hidden[-1] @ self.weights["output.weight"].T + self.weights["output.bias"]
        logits = logits - logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        rows = np.arange(len(x))
        loss = -float(np.mean(log_probs[rows, y]))
        delta = np.exp(log_probs)  # d loss / d logits = (softmax - onehot) / N
        delta[rows, y] -= 1.0
        delta /= len(x)
        grads = {}
        inputs = [x, *hidden]
        names = [f"hidden.{i}" for i in range(self.depth)] + ["output"]
        for layer in reversed(range(len(names))):
            grads[f"{names[layer]}.weight"] = delta.T @ inputs[layer]
            grads[f"{names[layer]}.bias"] = delta.sum(axis=0)
            if layer:
                delta = (delta @ self.weights[f"{names[layer]}.weight"]) * (inputs[layer] > 0)
        return loss, grads


def train(batches: Iterator[Batch], sizes: tuple[int, ...], steps: int, lr: float, seed: int) -> MLP:
    """``steps`` Adam updates on consecutive batches of ``batches`` (labelled), from a seeded
    He-normal initialisation. Deterministic given the batches and ``seed``."""
    model = MLP.initialise(sizes, np.random.default_rng([seed, 7]))
    first = {name: np.zeros_like(w) for name, w in model.weights.items()}
    second = {name: np.zeros_like(w) for name, w in model.weights.items()}
    for step in range(1, steps + 1):
        batch = next(batches)
        if batch.y is None:
            raise UsageError("classifier_fd: the data set yields batches without labels (y); the classifier "
                             "needs labelled data")
        _, grads = model.gradients(batch.x, batch.y)
        correction = np.sqrt(1 - BETAS[1] ** step) / (1 - BETAS[0] ** step)
        for name, grad in grads.items():
            first[name] += (1 - BETAS[0]) * (grad - first[name])
            second[name] += (1 - BETAS[1]) * (grad * grad - second[name])
            model.weights[name] -= lr * correction * first[name] / (np.sqrt(second[name]) + EPS)
    return model


# -- the file ------------------------------------------------------------------------------------


def save(path: Path, model: MLP, metadata: Mapping[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder (unique, so concurrent runs do not
    write into each other's), then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({name: np.ascontiguousarray(w, np.float32) for name, w in model.weights.items()}, temporary,
                  metadata={METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **metadata})})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: Path) -> tuple[MLP, dict[str, Any]]:
    """The classifier and metadata in ``path``; a file that is not one is a :class:`ToolkitError`."""
    def unreadable(problem: str) -> ToolkitError:
        return ToolkitError(f"{path}: not a readable classifier_fd classifier file ({problem}); delete it (or "
                            f"point classifier_fd's path elsewhere) and it is trained again")

    try:
        with safe_open(str(path), framework="numpy") as handle:
            text = (handle.metadata() or {}).get(METADATA_KEY)
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own types for corrupt files
        raise unreadable(f"{type(error).__name__}: {error}") from None
    if text is None:
        raise unreadable(f"no {METADATA_KEY!r} metadata")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise unreadable(f"its metadata is not JSON: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
        raise unreadable(f"format_version {metadata.get('format_version') if isinstance(metadata, dict) else None!r}, "
                         f"expected {FORMAT_VERSION}")
    model = MLP(weights)
    names = [f"hidden.{i}" for i in range(model.depth)] + ["output"]
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    expected = {f"{name}.{kind}" for name in names for kind in ("weight", "bias")}
    chained = set(shapes) == expected and model.depth > 0 and all(
        len(shapes[f"{name}.weight"]) == 2 and shapes[f"{name}.bias"] == shapes[f"{name}.weight"][:1]
        for name in names) and all(
        shapes[f"{after}.weight"][1] == shapes[f"{before}.weight"][0] for before, after in zip(names, names[1:]))
    if not chained:
        raise unreadable(f"its arrays are not the layers of an MLP: {sorted(shapes.items())}")
    return model, metadata
