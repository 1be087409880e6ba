"""The local embedding engine on a tiny BERT built here (no download): the batched numpy encoder against a
plain one-text-at-a-time reference, the model directory's pooling, and upload → retrieval through the API."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from webui_api.config import Settings
from webui_api.errors import ServiceUnavailable
from webui_api.rag import local_embed
from webui_api.rag.embed import Embedder
from webui_api.upstream import Upstream

from .rag_helpers import _drain_background, upload_ok  # noqa: F401 - the fixture drains ingest threads

pytest.importorskip("tokenizers", reason="the local engine's extra (pip install '.[local]')")
pytest.importorskip("safetensors", reason="the local engine's extra (pip install '.[local]')")

WORDS = "harbour tide ferry gull breakwater dawn engine piston valve boiler steam river bridge".split()
HIDDEN, HEADS, LAYERS, INNER = 8, 2, 2, 16


def tiny_bert(path: str, pooling: str = "mean", prefix: str = "", seed: int = 7) -> str:
    """A sentence-transformers directory: config, random weights, a word-level tokenizer, pooling."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    config = {"model_type": "bert", "hidden_size": HIDDEN, "num_attention_heads": HEADS, "layer_norm_eps": 1e-12,
              "num_hidden_layers": LAYERS, "intermediate_size": INNER, "max_position_embeddings": 32,
              "vocab_size": len(vocab)}
    _write(path, "config.json", config)
    _write(path, "1_Pooling/config.json", {"pooling_mode_mean_tokens": pooling == "mean",
                                           "pooling_mode_cls_token": pooling == "cls"})
    save_file({prefix + k: v for k, v in random_weights(len(vocab), seed).items()},
              os.path.join(path, "model.safetensors"))
    return path


def random_weights(vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"embeddings.word_embeddings.weight": (vocab, HIDDEN), "embeddings.position_embeddings.weight":
              (32, HIDDEN), "embeddings.token_type_embeddings.weight": (2, HIDDEN),
              "embeddings.LayerNorm.weight": (HIDDEN,), "embeddings.LayerNorm.bias": (HIDDEN,)}
    for n in range(LAYERS):
        p = f"encoder.layer.{n}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes.update({p + name + ".weight": (HIDDEN, HIDDEN), p + name + ".bias": (HIDDEN,)})
        shapes.update({p + "intermediate.dense.weight": (INNER, HIDDEN), p + "intermediate.dense.bias": (INNER,),
                       p + "output.dense.weight": (HIDDEN, INNER), p + "output.dense.bias": (HIDDEN,)})
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes.update({p + norm + ".weight": (HIDDEN,), p + norm + ".bias": (HIDDEN,)})
    return {name: rng.normal(0, 0.5, shape).astype(np.float32) for name, shape in shapes.items()}


def _write(path: str, name: str, data: dict) -> None:
    with open(os.path.join(path, name), "w") as f:
        json.dump(data, f)


def reference(weights: dict, ids: list[int], pooling: str) -> np.ndarray:
    """BERT for one unpadded text, token by token with math.erf: the textbook, nothing shared with the engine."""
    def norm(v, name):
        mean, var = sum(v) / len(v), sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v)
        return [(x - mean) / math.sqrt(var + 1e-12) * g + b
                for x, g, b in zip(v, weights[name + ".weight"], weights[name + ".bias"])]

    def dense(v, name):
        return [float(np.dot(row, v)) + b for row, b in zip(weights[name + ".weight"], weights[name + ".bias"])]

    def attention(states, p):
        q, k, v = ([dense(s, p + part) for s in states] for part in ("query", "key", "value"))
        size, out = HIDDEN // HEADS, [[0.0] * HIDDEN for _ in states]
        for h in range(HEADS):
            cut = slice(h * size, (h + 1) * size)
            for i in range(len(states)):
                scores = [float(np.dot(q[i][cut], k[j][cut])) / math.sqrt(size) for j in range(len(states))]
                exps = [math.exp(s - max(scores)) for s in scores]
                for j, e in enumerate(exps):
                    for d in range(size):
                        out[i][h * size + d] += e / sum(exps) * v[j][h * size + d]
        return out

    states = [norm([a + b + c for a, b, c in zip(weights["embeddings.word_embeddings.weight"][t],
                                                 weights["embeddings.position_embeddings.weight"][pos],
                                                 weights["embeddings.token_type_embeddings.weight"][0])],
                   "embeddings.LayerNorm") for pos, t in enumerate(ids)]
    for n in range(LAYERS):
        p = f"encoder.layer.{n}."
        mixed = [dense(a, p + "attention.output.dense") for a in attention(states, p + "attention.self.")]
        states = [norm([x + y for x, y in zip(s, m)], p + "attention.output.LayerNorm") for s, m in zip(states, mixed)]
        inner = [[0.5 * x * (1 + math.erf(x / math.sqrt(2))) for x in dense(s, p + "intermediate.dense")]
                 for s in states]
        states = [norm([x + y for x, y in zip(s, dense(i, p + "output.dense"))], p + "output.LayerNorm")
                  for s, i in zip(states, inner)]
    return np.array(states[0] if pooling == "cls" else np.mean(states, axis=0), dtype=np.float32)


def token_ids(text: str) -> list[int]:
    return [2] + [4 + WORDS.index(w) if w in WORDS else 1 for w in text.split()] + [3]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_batched_encoder_matches_the_one_text_reference(tmp_path, pooling):
    model = local_embed.LocalModel(tiny_bert(str(tmp_path / "m"), pooling))
    texts = ["harbour tide", "ferry gull breakwater dawn engine piston", "steam", "valve unknownword river"]
    got = model.embed(texts)  # one batch: the short texts are padded to the longest
    weights = random_weights(4 + len(WORDS), 7)
    for text, vector in zip(texts, got):
        assert np.allclose(vector, reference(weights, token_ids(text), pooling), atol=1e-4), text


def test_checkpoints_with_a_bert_prefix_load_the_same(tmp_path):
    plain = local_embed.LocalModel(tiny_bert(str(tmp_path / "a")))
    prefixed = local_embed.LocalModel(tiny_bert(str(tmp_path / "b"), prefix="bert."))
    assert np.array_equal(plain.embed(["tide river"]), prefixed.embed(["tide river"]))


def test_models_resolve_from_a_directory_or_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--sentence-transformers--tiny"
    tiny_bert(str(repo / "snapshots" / "abc123"))
    os.makedirs(repo / "refs")
    (repo / "refs" / "main").write_text("abc123\n")
    snapshot = str(repo / "snapshots" / "abc123")
    assert local_embed.resolve("sentence-transformers/tiny") == snapshot
    assert local_embed.resolve("tiny") == snapshot  # sentence-transformers' short name
    assert local_embed.resolve(snapshot) == snapshot
    with pytest.raises(ServiceUnavailable) as missing:
        local_embed.resolve("nobody/nothing")
    assert "not found" in missing.value.detail and str(tmp_path / "hub") in missing.value.detail


def test_non_bert_models_are_refused_with_a_reason(tmp_path):
    path = tiny_bert(str(tmp_path / "m"))
    _write(path, "config.json", {"model_type": "t5"})
    with pytest.raises(ServiceUnavailable) as refused:
        local_embed.LocalModel(path)
    assert "'t5'" in refused.value.detail and "BERT" in refused.value.detail


@pytest.mark.parametrize("engine", ["local", ""])  # "" is Open WebUI's name for its local engine
def test_embedder_batches_and_normalises_locally(tmp_path, engine):
    path = tiny_bert(str(tmp_path / f"m{engine}"))
    settings = Settings.from_env(env={}, overrides={
        "DATA_DIR": str(tmp_path), "RAG_EMBEDDING_ENGINE": engine, "RAG_EMBEDDING_MODEL": path,
        "RAG_EMBEDDING_BATCH_SIZE": "2", "OLLAMA_BASE_URLS": "", "OPENAI_API_BASE_URLS": ""})
    embedder = Embedder(settings, Upstream(settings))
    vectors = embedder.embed(["harbour tide", "steam", "river bridge"])
    assert embedder.engine == "local" and vectors.shape == (3, HIDDEN)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = local_embed.model_for(path).embed(["steam"])[0]
    assert np.allclose(vectors[1], alone / np.linalg.norm(alone), atol=1e-5)


@pytest.fixture
def settings_overrides(tmp_path):
    return {"RAG_EMBEDDING_ENGINE": "local", "RAG_EMBEDDING_MODEL": tiny_bert(str(tmp_path / "model"))}


def test_upload_and_retrieval_run_on_the_local_model(client, admin):
    texts = {"tides.txt": "harbour tide ferry gull", "engines.txt": "engine piston valve boiler steam"}
    files = {name: upload_ok(client, admin["headers"], name, text.encode()) for name, text in texts.items()}
    for name, text in texts.items():
        answer = client.post("/api/v1/retrieval/query/collection", headers=admin["headers"],
                             json={"collection_names": [f"file-{f['id']}" for f in files.values()], "query": text,
                                   "k": 1})
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["metadatas"][0][0]["name"] == name


def test_a_missing_local_model_fails_the_upload_with_the_reason(client, admin, app):
    app.extensions["webui_api"].settings.RAG_EMBEDDING_MODEL = "/nonexistent/model"
    response = client.post("/api/v1/files/", headers=admin["headers"], content_type="multipart/form-data",
                           data={"file": (__import__("io").BytesIO(b"harbour tide"), "x.txt", "text/plain")})
    assert response.status_code == 503, response.get_json()
    assert "'/nonexistent/model' not found" in response.get_json()["detail"]
