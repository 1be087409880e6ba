"""`/openai/...`: the configured OpenAI-compatible connections behind one URL, routed by model."""
from __future__ import annotations

import marshmallow as ma
from flask import request
from flask.views import MethodView

from ..gateway import proxy
from .deps import ext
from .json_input import Blueprint
from .ollama import SSE, calling_user, respond
from .schemas import OpenSchema, Relayed, StrictBoolean

blp = Blueprint("openai", __name__, url_prefix="/openai",
                description="OpenAI API passthrough: each call goes to the connection that serves its model "
                            "(with that connection's key). Unknown model: 404 `Model 'x' was not found`.")


class OpenAIBody(OpenSchema):
    """OpenAI's request body: `model` picks the connection; everything is forwarded as sent."""

    model = ma.fields.String(required=True, metadata={"example": "gpt-4o-mini"})
    stream = StrictBoolean()


class OpenAIChatBody(OpenAIBody):
    messages = ma.fields.List(ma.fields.Dict(), required=True,
                              metadata={"example": [{"role": "user", "content": "Hello"}]})


class CompletionBody(OpenAIBody):
    prompt = ma.fields.Raw()


class EmbeddingBody(OpenAIBody):
    input = ma.fields.Raw(required=True, metadata={"description": "A string or a list of strings"})


class ResponsesBody(OpenAIBody):
    input = ma.fields.Raw(metadata={"description": "Text, or a list of input items", "example": "Hello"})
    instructions = ma.fields.String()


class OpenAIReply(Relayed):
    """The connection's JSON answer, relayed untouched."""


class OpenAIModelListSchema(Relayed):
    object = ma.fields.String()
    data = ma.fields.List(ma.fields.Dict(), metadata={"description": (
        "Merged: each entry with `urlIdx`, `connection_type` and the raw entry under `openai`")})


def _body(schema: type[OpenAIBody]) -> dict:
    """Documents the request body; the view forwards it as sent (no parsing on the way)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _forward(path: str, url_idx: int | None):
    body = request.get_json(force=True, silent=True)  # `curl -d` sends a form content type
    return respond(proxy.openai_call(ext().catalog, path, body, url_idx, user=calling_user()))


@blp.route("/models", endpoint="models")
@blp.route("/models/<int:url_idx>", endpoint="models_idx")
class Models(MethodView):
    @blp.response(200, OpenAIModelListSchema)
    def get(self, url_idx: int | None = None):
        """Models of every connection (`urlIdx` says which; the raw entry is under `openai`), or one
        connection's raw list."""
        return proxy.openai_models(ext().catalog, url_idx)


@blp.route("/chat/completions", endpoint="chat")
@blp.route("/chat/completions/<int:url_idx>", endpoint="chat_idx")
class ChatCompletions(MethodView):
    @blp.doc(**_body(OpenAIChatBody))
    @blp.response(200, OpenAIReply)
    @blp.alt_response(200, schema=SSE, content_type="text/event-stream", success=True)
    def post(self, url_idx: int | None = None):
        """Chat completion, JSON or SSE (`stream: true`) relayed as it arrives."""
        return _forward("/chat/completions", url_idx)


@blp.route("/completions", endpoint="completions")
@blp.route("/completions/<int:url_idx>", endpoint="completions_idx")
class Completions(MethodView):
    @blp.doc(**_body(CompletionBody))
    @blp.response(200, OpenAIReply)
    @blp.alt_response(200, schema=SSE, content_type="text/event-stream", success=True)
    def post(self, url_idx: int | None = None):
        """Legacy text completion, relayed."""
        return _forward("/completions", url_idx)


@blp.route("/embeddings", endpoint="embeddings")
@blp.route("/embeddings/<int:url_idx>", endpoint="embeddings_idx")
class Embeddings(MethodView):
    @blp.doc(**_body(EmbeddingBody))
    @blp.response(200, OpenAIReply)
    def post(self, url_idx: int | None = None):
        """Embeddings from the connection serving the model."""
        return _forward("/embeddings", url_idx)


@blp.route("/responses", endpoint="responses")
@blp.route("/responses/<int:url_idx>", endpoint="responses_idx")
class Responses(MethodView):
    @blp.doc(**_body(ResponsesBody))
    @blp.response(200, OpenAIReply)
    @blp.alt_response(200, schema=SSE, content_type="text/event-stream", success=True)
    def post(self, url_idx: int | None = None):
        """OpenAI's Responses API (newer SDKs, coding agents): JSON, or its SSE events relayed as they
        arrive."""
        return _forward("/responses", url_idx)
