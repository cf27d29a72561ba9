"""Intent classification for mobile clients: a small, real model served over HTTP.

``POST /invoke`` with ``{"text": str}`` (1..4096 characters) answers::

    {"label": "navigation", "confidence": 0.93, "scores": {"navigation": 0.93, ...},
     "model": "intent-hashproj-v1", "device": "cpu", "tokens": 6, "compute_ms": 0.41}

The model, built at start-up from the labelled phrases in :data:`INTENT_EXAMPLES`:

1. tokenize: lowercase words, plus the character trigrams of each word (``#word#`` padded);
2. feature hashing: each token goes to one of :data:`FEATURE_DIM` buckets with a ±1 sign
   (CRC-32, stable across processes), weighted by an IDF learned from the examples, then the
   sparse vector is L2-normalised;
3. a seeded random projection to :data:`HIDDEN_DIM` units followed by ReLU, normalised and
   centred on the mean of the example vectors;
4. nearest centroid by cosine similarity against one centroid per intent (the mean of that
   intent's example vectors); ``scores`` is a softmax of the cosines (temperature
   :data:`SOFTMAX_TEMPERATURE`) and ``confidence`` is the winner's score.

``tokens`` counts words; a text with no word at all gets ``label`` ``"unknown"`` and
``confidence`` 0. A missing ``text``, or one that is not a string of 1..4096 characters, is
refused with a 422 naming ``payload.text``; other fields are ignored (an integer in one too
long to parse at all is refused like any, see :mod:`workloads.server`).

The pure-Python engine is the default and needs only the standard library. When ``torch`` is
importable, the same pipeline runs as tensors and a small seeded
``torch.nn.TransformerEncoder`` over the word embeddings adds a mean-pooled stage (on CUDA
when available). ``MEC_WORKLOAD_DEVICE`` chooses: ``auto`` (default: torch on CUDA, else torch
on CPU, else pure Python), ``cpu`` (torch on CPU when importable, else pure Python), ``cuda``
(torch on CUDA or refuse to start), ``python`` (always the pure-Python engine). Results are
deterministic for the same input on the same engine and device.

Run it with ``python -m workloads.inference --port N``.
"""

from __future__ import annotations

import math
import operator
import os
import random
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workloads.server import main, require_str

SERVICE_NAME = "inference"
DEVICE_ENV = "MEC_WORKLOAD_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "python")

MAX_TEXT_CHARS = 4096
FEATURE_DIM = 1024
"""Buckets of the hashed feature space (a power of two)."""
HIDDEN_DIM = 256
"""Units of the random projection layer."""
SEED = 20_240_611
WORD_WEIGHT = 1.0
TRIGRAM_WEIGHT = 0.5
SOFTMAX_TEMPERATURE = 0.1
UNKNOWN_LABEL = "unknown"

PYTHON_MODEL = "intent-hashproj-v1"
TORCH_MODEL = "intent-hashproj-transformer-v1"

TRANSFORMER_LAYERS = 4
TRANSFORMER_D_MODEL = 256
TRANSFORMER_HEADS = 8
TRANSFORMER_FF = 512
TRANSFORMER_VOCAB = 4096
"""Hash buckets of the word-embedding table of the transformer stage."""
TRANSFORMER_MAX_TOKENS = 256
"""Words beyond this many are left out of the transformer stage (not of the hashed features)."""
TRANSFORMER_WEIGHT = 0.5
"""Weight of the transformer's pooled vector next to the projection's (both unit length)."""

EXAMPLE_PAYLOAD: dict[str, Any] = {"text": "navigate to the nearest gas station"}

INTENT_EXAMPLES: dict[str, tuple[str, ...]] = {
    "navigation": (
        "get directions to the airport",
        "how do i get to the train station",
        "navigate home avoiding highways",
        "show me the fastest route to work",
        "take me to the closest parking garage",
        "find a route to downtown",
        "how far is the museum from here",
        "start navigation to main street",
        "which way to the nearest hospital",
        "drive me to the city center",
        "directions to the nearest pharmacy",
    ),
    "weather": (
        "what is the weather like today",
        "will it rain tomorrow",
        "how hot will it be this afternoon",
        "is there a storm warning for tonight",
        "what's the forecast for the weekend",
        "do i need an umbrella today",
        "how cold is it outside",
        "show the temperature in berlin",
        "will it snow on friday",
        "is it going to be sunny tomorrow",
    ),
    "music": (
        "play some jazz music",
        "skip to the next song",
        "play my workout playlist",
        "turn up the volume of the music",
        "pause the song",
        "who sings this song",
        "play the latest album by radiohead",
        "shuffle my favorite tracks",
        "put on some relaxing music",
        "repeat this track",
    ),
    "messaging": (
        "send a message to mom",
        "text john that i am running late",
        "read my new messages",
        "reply to sarah saying see you soon",
        "send a whatsapp message to the team",
        "did anyone text me",
        "write an sms to dad",
        "tell alex i will call him later",
        "check my unread chats",
        "message the group that dinner is ready",
    ),
    "shopping": (
        "add milk to my shopping list",
        "order a new phone charger",
        "buy running shoes online",
        "where is my package",
        "track my amazon order",
        "find a cheap laptop deal",
        "reorder paper towels",
        "compare prices for headphones",
        "put eggs and bread in my cart",
        "checkout my shopping cart",
    ),
    "camera": (
        "take a picture",
        "open the camera",
        "take a selfie",
        "record a video",
        "switch to the front camera",
        "turn on the camera flash",
        "start recording a slow motion video",
        "take a panorama photo",
        "zoom in and take a photo",
        "snap a photo in portrait mode",
    ),
    "translation": (
        "translate hello into spanish",
        "how do you say thank you in japanese",
        "what does bonjour mean in english",
        "translate this sentence to german",
        "say good morning in french",
        "what is the italian word for cheese",
        "translate the menu into english",
        "how do i say where is the bathroom in portuguese",
        "convert this text from chinese to english",
        "detect the language of this text",
    ),
    "fitness": (
        "start a running workout",
        "how many steps did i take today",
        "log a thirty minute bike ride",
        "what is my heart rate",
        "start a yoga session",
        "how many calories did i burn",
        "track my swim workout",
        "set a daily step goal of ten thousand",
        "begin a strength training workout",
        "show my sleep and activity stats",
    ),
}

_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


# --- text -> hashed sparse features (shared by both engines) -----------------------------------------


def tokenize(text: str) -> list[str]:
    """Lowercase words (letters and digits; inner apostrophes kept, as in ``what's``)."""
    return _WORD_RE.findall(text.lower())


def _bucket(token: str) -> tuple[int, float]:
    """Stable bucket and ±1 sign of a token (CRC-32: the same in every process)."""
    digest = zlib.crc32(token.encode("utf-8"))
    return digest & (FEATURE_DIM - 1), (1.0 if digest & 0x10000 else -1.0)


def _raw_features(words: Sequence[str]) -> dict[int, float]:
    """Signed, weighted counts per bucket of the words and of their character trigrams."""
    counts: Counter[str] = Counter()
    for word in words:
        counts["w:" + word] += 1
        padded = f"#{word}#"
        for start in range(len(padded) - 2):
            counts["c:" + padded[start : start + 3]] += 1
    vector: dict[int, float] = {}
    for token, count in counts.items():
        index, sign = _bucket(token)
        weight = WORD_WEIGHT if token[0] == "w" else TRIGRAM_WEIGHT
        vector[index] = vector.get(index, 0.0) + sign * weight * count
    return vector


@dataclass(frozen=True)
class HashedFeatures:
    """An L2-normalised sparse vector in the hashed feature space."""

    indices: tuple[int, ...]
    values: tuple[float, ...]
    words: tuple[str, ...]


class FeatureHasher:
    """Hashes text to IDF-weighted sparse vectors; the IDF comes from the example phrases."""

    def __init__(self, documents: Sequence[str]) -> None:
        document_frequency: Counter[int] = Counter()
        for document in documents:
            document_frequency.update(_raw_features(tokenize(document)).keys())
        total = len(documents)
        self._idf = [math.log((1 + total) / (1 + document_frequency[i])) + 1.0 for i in range(FEATURE_DIM)]

    def __call__(self, text: str) -> HashedFeatures:
        words = tokenize(text)
        idf = self._idf
        weighted = [(index, value * idf[index]) for index, value in _raw_features(words).items() if value]
        norm = math.sqrt(math.fsum(value * value for _, value in weighted))
        if norm == 0.0:
            return HashedFeatures((), (), tuple(words))
        return HashedFeatures(
            tuple(index for index, _ in weighted), tuple(value / norm for _, value in weighted), tuple(words)
        )


def projection_matrix() -> list[list[float]]:
    """The seeded random projection, ``FEATURE_DIM`` rows of ``HIDDEN_DIM`` weights."""
    rng = random.Random(SEED)
    scale = 1.0 / math.sqrt(HIDDEN_DIM)
    return [[rng.gauss(0.0, scale) for _ in range(HIDDEN_DIM)] for _ in range(FEATURE_DIM)]


def _softmax_scores(labels: Sequence[str], cosines: Sequence[float]) -> dict[str, float]:
    top = max(cosines)
    exps = [math.exp((cosine - top) / SOFTMAX_TEMPERATURE) for cosine in cosines]
    total = math.fsum(exps)
    return {label: round(value / total, 6) for label, value in zip(labels, exps, strict=True)}


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(math.fsum(value * value for value in vector))
    return [value / norm for value in vector] if norm else list(vector)


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    scores: dict[str, float]


# --- engines ---------------------------------------------------------------------------------------


class PythonEngine:
    """The pipeline in plain Python: sparse rows of the projection summed column-wise."""

    model = PYTHON_MODEL
    device = "cpu"
    engine = "python"

    def __init__(self, hasher: FeatureHasher, examples: dict[str, tuple[str, ...]]) -> None:
        self._hasher = hasher
        self._weights = projection_matrix()
        self.labels: tuple[str, ...] = tuple(examples)
        encoded = {label: [self._hidden(hasher(text)) for text in texts] for label, texts in examples.items()}
        everything = [vector for vectors in encoded.values() for vector in vectors]
        self._mean = [math.fsum(column) / len(everything) for column in zip(*everything, strict=True)]
        self._centroids = [
            _unit(
                [
                    math.fsum(column) / len(vectors)
                    for column in zip(*(self._centred(v) for v in vectors), strict=True)
                ]
            )
            for vectors in encoded.values()
        ]

    def _hidden(self, features: HashedFeatures) -> list[float]:
        """ReLU(x · W), normalised to unit length (a zero vector stays zero)."""
        weights = self._weights
        rows = [
            [value * weight for weight in weights[index]]
            for index, value in zip(features.indices, features.values, strict=True)
        ]
        if not rows:
            return [0.0] * HIDDEN_DIM
        return _unit([total if total > 0.0 else 0.0 for total in map(sum, zip(*rows, strict=True))])

    def _centred(self, hidden: list[float]) -> list[float]:
        return list(map(operator.sub, hidden, self._mean))

    def predict(self, features: HashedFeatures) -> Prediction | None:
        if not features.indices:
            return None
        query = _unit(self._centred(self._hidden(features)))
        cosines = [sum(map(operator.mul, query, centroid)) for centroid in self._centroids]
        scores = _softmax_scores(self.labels, cosines)
        best = max(range(len(cosines)), key=cosines.__getitem__)
        return Prediction(self.labels[best], scores[self.labels[best]], scores)


class TorchEngine:
    """The same pipeline as tensors, plus a seeded transformer encoder over word embeddings."""

    model = TORCH_MODEL
    engine = "torch"

    def __init__(self, hasher: FeatureHasher, examples: dict[str, tuple[str, ...]], device: str) -> None:
        import torch  # optional dependency: only this engine needs it

        self._torch = torch
        self._hasher = hasher
        self._lock = threading.Lock()
        self.device = device
        self._device = torch.device(device)
        self.labels: tuple[str, ...] = tuple(examples)
        self._weights = torch.tensor(projection_matrix(), dtype=torch.float32, device=self._device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            self._embedding = torch.nn.Embedding(TRANSFORMER_VOCAB, TRANSFORMER_D_MODEL)
            layer = torch.nn.TransformerEncoderLayer(
                d_model=TRANSFORMER_D_MODEL,
                nhead=TRANSFORMER_HEADS,
                dim_feedforward=TRANSFORMER_FF,
                dropout=0.0,
                batch_first=True,
            )
            self._encoder = torch.nn.TransformerEncoder(
                layer, num_layers=TRANSFORMER_LAYERS, enable_nested_tensor=False
            )
        self._embedding.to(self._device).eval()
        self._encoder.to(self._device).eval()
        self._positions = self._sinusoids(TRANSFORMER_MAX_TOKENS).to(self._device)
        with torch.inference_mode():
            encoded = {
                label: torch.stack([self._features(hasher(text)) for text in texts])
                for label, texts in examples.items()
            }
            everything = torch.cat(list(encoded.values()))
            self._mean = everything.mean(dim=0)
            centroids = torch.stack([(vectors - self._mean).mean(dim=0) for vectors in encoded.values()])
            self._centroids = torch.nn.functional.normalize(centroids, dim=1)

    def _sinusoids(self, length: int) -> Any:
        torch = self._torch
        position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
        frequency = torch.exp(
            torch.arange(0, TRANSFORMER_D_MODEL, 2, dtype=torch.float32)
            * (-math.log(10_000.0) / TRANSFORMER_D_MODEL)
        )
        table = torch.zeros(length, TRANSFORMER_D_MODEL)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        return table

    def _features(self, features: HashedFeatures) -> Any:
        """[unit(ReLU(x · W)), TRANSFORMER_WEIGHT · unit(mean-pooled encoder output)]."""
        torch = self._torch
        functional = torch.nn.functional
        indices = torch.tensor(features.indices, dtype=torch.long, device=self._device)
        values = torch.tensor(features.values, dtype=torch.float32, device=self._device)
        hidden = functional.normalize(torch.relu(values @ self._weights[indices]), dim=0)
        words = features.words[:TRANSFORMER_MAX_TOKENS]
        ids = torch.tensor(
            [zlib.crc32(word.encode("utf-8")) % TRANSFORMER_VOCAB for word in words],
            dtype=torch.long,
            device=self._device,
        )
        tokens = self._embedding(ids) + self._positions[: len(words)]
        pooled = self._encoder(tokens.unsqueeze(0)).mean(dim=1).squeeze(0)
        return torch.cat([hidden, TRANSFORMER_WEIGHT * functional.normalize(pooled, dim=0)])

    def predict(self, features: HashedFeatures) -> Prediction | None:
        if not features.indices or not features.words:
            return None
        torch = self._torch
        with self._lock, torch.inference_mode():
            query = torch.nn.functional.normalize(self._features(features) - self._mean, dim=0)
            cosines = (self._centroids @ query).tolist()
        scores = _softmax_scores(self.labels, cosines)
        best = max(range(len(cosines)), key=cosines.__getitem__)
        return Prediction(self.labels[best], scores[self.labels[best]], scores)


def _torch_device(requested: str) -> str | None:
    """The torch device for ``requested``, or None for the pure-Python engine."""
    if requested == "python":
        return None
    try:
        import torch
    except ImportError:
        if requested == "cuda":
            raise RuntimeError(f"{DEVICE_ENV}=cuda but torch is not installed") from None
        return None
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{DEVICE_ENV}=cuda but torch sees no CUDA device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


# --- the service -----------------------------------------------------------------------------------


class InferenceService:
    """Intent classification of short texts; the model is built when the service is created."""

    name = SERVICE_NAME

    def __init__(self, device: str | None = None) -> None:
        requested = (device or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
        if requested not in DEVICE_CHOICES:
            raise ValueError(f"{DEVICE_ENV} must be one of {', '.join(DEVICE_CHOICES)} (got {requested!r})")
        self._hasher = FeatureHasher([text for texts in INTENT_EXAMPLES.values() for text in texts])
        torch_device = _torch_device(requested)
        self._engine: PythonEngine | TorchEngine
        if torch_device is None:
            self._engine = PythonEngine(self._hasher, INTENT_EXAMPLES)
        else:
            self._engine = TorchEngine(self._hasher, INTENT_EXAMPLES, torch_device)

    @property
    def labels(self) -> tuple[str, ...]:
        return self._engine.labels

    def info(self) -> dict[str, Any]:
        return {
            "model": self._engine.model,
            "engine": self._engine.engine,
            "device": self._engine.device,
            "labels": list(self._engine.labels),
        }

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        text = require_str(payload, "text", min_len=1, max_len=MAX_TEXT_CHARS)
        started = time.perf_counter()
        features = self._hasher(text)
        prediction = self._engine.predict(features)
        compute_ms = (time.perf_counter() - started) * 1000.0
        if prediction is None:
            uniform = round(1.0 / len(self.labels), 6)
            prediction = Prediction(UNKNOWN_LABEL, 0.0, dict.fromkeys(self.labels, uniform))
        return {
            "label": prediction.label,
            "confidence": prediction.confidence,
            "scores": prediction.scores,
            "model": self._engine.model,
            "device": self._engine.device,
            "tokens": len(features.words),
            "compute_ms": round(compute_ms, 4),
        }


if __name__ == "__main__":
    raise SystemExit(main(InferenceService))
