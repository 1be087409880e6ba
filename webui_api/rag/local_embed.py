"""The local embedding engine: a BERT-family sentence-transformers model (Open WebUI's default kind) read from
a directory or the Hugging Face cache and run with numpy alone; `tokenizers` splits the text and `safetensors`
reads the weights (the optional extra `webui-api[local]`), so serving needs no torch."""
from __future__ import annotations

import json
import math
import os
import threading
from typing import Sequence

import numpy as np

from ..errors import ServiceUnavailable

EXTRA_HINT = "RAG_EMBEDDING_ENGINE=local needs the optional extra: pip install 'webui-api[local]'."
_loaded: dict[str, "LocalModel"] = {}
_loading = threading.Lock()


def model_for(name: str) -> "LocalModel":
    """The model named by RAG_EMBEDDING_MODEL, loaded once per process (a directory or a cached Hub repo)."""
    with _loading:
        if name not in _loaded:
            _loaded[name] = LocalModel(resolve(name))
        return _loaded[name]


def resolve(name: str) -> str:
    """A directory as given, else the Hub cache's current snapshot of the repo (sentence-transformers'
    short names such as `all-MiniLM-L6-v2` mean `sentence-transformers/<name>`, as that library reads them)."""
    given = os.path.expanduser(name)
    if os.path.isdir(given):
        return given
    repos = [name] + ([f"sentence-transformers/{name}"] if "/" not in name else [])
    for repo in repos:
        snapshot = _cached_snapshot(repo)
        if snapshot:
            return snapshot
    raise ServiceUnavailable(f"Local embedding model {name!r} not found: give a directory in RAG_EMBEDDING_MODEL "
                             f"or download the model into the Hugging Face cache ({_hub_cache()}).")


def _hub_cache() -> str:
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


def _cached_snapshot(repo: str) -> str | None:
    root = os.path.join(_hub_cache(), "models--" + repo.replace("/", "--"))
    try:
        with open(os.path.join(root, "refs", "main")) as ref:
            snapshot = os.path.join(root, "snapshots", ref.read().strip())
    except OSError:
        return None
    return snapshot if os.path.isdir(snapshot) else None


class LocalModel:
    """A BERT encoder with the model directory's pooling; thread-safe (nothing changes after loading)."""

    def __init__(self, path: str):
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError:
            raise ServiceUnavailable(EXTRA_HINT) from None
        config = _json(path, "config.json")
        if config.get("model_type") != "bert":
            raise ServiceUnavailable(f"The local embedding engine runs BERT-family models; {path} holds a "
                                     f"{config.get('model_type')!r} model. Serve it through Ollama or an "
                                     "OpenAI-compatible server instead.")
        self.heads, self.eps = int(config["num_attention_heads"]), float(config.get("layer_norm_eps", 1e-12))
        self.weights = _bert_weights(load_file(os.path.join(path, "model.safetensors")))
        self.layers = int(config["num_hidden_layers"])
        self.pooling = _pooling(path)
        limit = _json(path, "sentence_bert_config.json", {}).get("max_seq_length") \
            or config.get("max_position_embeddings", 512)
        self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tokenizer.enable_truncation(int(limit))
        self.tokenizer.enable_padding()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), hidden) float32 sentence vectors (pooled, not yet normalised)."""
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.float32)
        types = np.array([e.type_ids for e in encoded], dtype=np.int64)
        return self._pool(self._encode(ids, types, mask), mask)

    def _encode(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.weights
        positions = np.arange(ids.shape[1])
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][positions] \
            + w["embeddings.token_type_embeddings.weight"][types]
        x = self._norm(x, "embeddings.LayerNorm")
        blocked = (1.0 - mask)[:, None, None, :] * np.float32(-1e9)  # padding takes no attention
        for layer in range(self.layers):
            x = self._layer(x, f"encoder.layer.{layer}.", blocked)
        return x

    def _layer(self, x: np.ndarray, p: str, blocked: np.ndarray) -> np.ndarray:
        attended = self._attention(x, p + "attention.self.", blocked)
        x = self._norm(x + self._linear(attended, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        inner = _gelu(self._linear(x, p + "intermediate.dense"))
        return self._norm(x + self._linear(inner, p + "output.dense"), p + "output.LayerNorm")

    def _attention(self, x: np.ndarray, p: str, blocked: np.ndarray) -> np.ndarray:
        batch, length, hidden = x.shape
        size = hidden // self.heads

        def split(name):  # (batch, heads, length, size)
            return self._linear(x, p + name).reshape(batch, length, self.heads, size).transpose(0, 2, 1, 3)

        scores = split("query") @ split("key").transpose(0, 1, 3, 2) / np.float32(math.sqrt(size)) + blocked
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        return (scores @ split("value")).transpose(0, 2, 1, 3).reshape(batch, length, hidden)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T + b as one matrix product over every token (a 3-d product runs one per text)."""
        flat = x.reshape(-1, x.shape[-1]) @ self.weights[name + ".weight.T"]
        flat += self.weights[name + ".bias"]
        return flat.reshape(*x.shape[:-1], -1)

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        centred = x - x.mean(axis=-1, keepdims=True)
        scaled = centred / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + self.eps)
        return scaled * self.weights[name + ".weight"] + self.weights[name + ".bias"]

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "max":
            return np.where(mask[..., None] > 0, hidden, np.float32(-1e9)).max(axis=1)
        summed = (hidden * mask[..., None]).sum(axis=1)
        return summed / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)


def _json(path: str, name: str, default=None) -> dict:
    try:
        with open(os.path.join(path, name)) as f:
            return json.load(f)
    except FileNotFoundError:
        if default is not None:
            return default
        raise ServiceUnavailable(f"{path} is not a sentence-transformers model directory: no {name}.") from None


def _pooling(path: str) -> str:
    """The pooling of the model's `1_Pooling/config.json` (sentence-transformers' mean when absent)."""
    config = _json(path, os.path.join("1_Pooling", "config.json"), {})
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_max_tokens"):
        return "max"
    return "mean"


def _bert_weights(tensors: dict) -> dict[str, np.ndarray]:
    """Weights by BertModel name, as float32: checkpoints of BertFor* heads prefix `bert.`; old ones say
    gamma/beta for LayerNorm weight/bias."""
    renamed = {}
    for name, value in tensors.items():
        name = name.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight") \
            .replace("LayerNorm.beta", "LayerNorm.bias")
        if name.startswith("encoder.") and name.endswith(".weight") and value.ndim == 2:
            name, value = name + ".T", value.T  # dense layers, stored the way the product reads them
        renamed[name] = np.ascontiguousarray(value, dtype=np.float32)
    return renamed


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU; erf from Abramowitz–Stegun 7.1.26 (error below 1.5e-7), numpy having none."""
    z = np.abs(x) * np.float32(1 / math.sqrt(2.0))
    t = 1.0 / (1.0 + np.float32(0.3275911) * z)
    poly = np.float32(1.061405429) * t
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(coefficient)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)  # -z²
    poly *= np.exp(z, out=z)
    erf = np.copysign(1.0 - poly, x)  # erf(|x|/√2) with the sign of x
    erf += 1.0
    erf *= x
    erf *= np.float32(0.5)
    return erf
