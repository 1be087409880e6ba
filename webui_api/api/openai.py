"""`/openai/...`: the configured OpenAI-compatible connections behind one URL, routed by model."""
from __future__ import annotations

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint

from ..gateway import proxy
from .deps import ext
from .ollama import forwarded_user, respond

blp = Blueprint("openai", __name__, url_prefix="/openai",
                description="OpenAI API passthrough: each call goes to the connection that serves its model "
                            "(with that connection's key). Unknown model: 404 `Model 'x' was not found`.")


def _forward(path: str, url_idx: int | None):
    body = request.get_json(force=True, silent=True)  # `curl -d` sends a form content type
    return respond(proxy.openai_call(ext().catalog, path, body, url_idx, user=forwarded_user()))


@blp.route("/models", endpoint="models")
@blp.route("/models/<int:url_idx>", endpoint="models_idx")
class Models(MethodView):
    def get(self, url_idx: int | None = None):
        """Models of every connection (`urlIdx` says which; the raw entry is under `openai`), or one
        connection's raw list."""
        return proxy.openai_models(ext().catalog, url_idx)


@blp.route("/chat/completions", endpoint="chat")
@blp.route("/chat/completions/<int:url_idx>", endpoint="chat_idx")
class ChatCompletions(MethodView):
    def post(self, url_idx: int | None = None):
        """Chat completion, JSON or SSE (`stream: true`) relayed as it arrives."""
        return _forward("/chat/completions", url_idx)


@blp.route("/completions", endpoint="completions")
@blp.route("/completions/<int:url_idx>", endpoint="completions_idx")
class Completions(MethodView):
    def post(self, url_idx: int | None = None):
        """Legacy text completion, relayed."""
        return _forward("/completions", url_idx)


@blp.route("/embeddings", endpoint="embeddings")
@blp.route("/embeddings/<int:url_idx>", endpoint="embeddings_idx")
class Embeddings(MethodView):
    def post(self, url_idx: int | None = None):
        """Embeddings from the connection serving the model."""
        return _forward("/embeddings", url_idx)
