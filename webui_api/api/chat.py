"""OpenAI-compatible chat completions and embeddings over every registered model."""
from __future__ import annotations

import marshmallow as ma
from flask import Response
from flask.views import MethodView
from webargs.flaskparser import is_json_request

from ..errors import UnsupportedMediaType
from ..gateway import chat as gateway
from ..gateway import completions
from .deps import current_user, ext
from .json_input import Blueprint, GuardedParser, loads
from .schemas import EVENT_STREAM, OpenSchema, Relayed, StrictBoolean


class JsonBodyParser(GuardedParser):
    """Reads the body as JSON whatever its label: `curl -d` sends JSON as a form (the /ollama routes take
    it too); a body that is not JSON is refused saying what is wanted, not as missing fields."""

    def _raw_load_json(self, req):
        if is_json_request(req):
            return super()._raw_load_json(req)
        try:
            return loads(req.get_data(cache=True))
        except ValueError:
            raise UnsupportedMediaType("The body must be JSON (Content-Type: application/json).") from None


blp = Blueprint("chat", __name__, description="Chat completions and embeddings (OpenAI-compatible)")
blp.ARGUMENTS_PARSER = JsonBodyParser()


class SamplingSchema(OpenSchema):
    """The numbers the gateway converts for a backend, in OpenAI's ranges, at the top level and in `params`:
    a value no backend takes is the client's mistake (422), not a backend failure (the JSON reader already
    refuses NaN, Infinity and endless digits). Other keys pass untouched."""

    temperature = ma.fields.Float(allow_none=True, validate=ma.validate.Range(min=0, max=2))
    top_p = ma.fields.Float(allow_none=True, validate=ma.validate.Range(min=0, max=1))
    frequency_penalty = ma.fields.Float(allow_none=True, validate=ma.validate.Range(min=-2, max=2))
    presence_penalty = ma.fields.Float(allow_none=True, validate=ma.validate.Range(min=-2, max=2))
    max_tokens = ma.fields.Integer(allow_none=True, strict=True, validate=ma.validate.Range(min=1, max=2**31 - 1))
    max_completion_tokens = ma.fields.Integer(allow_none=True, strict=True,
                                              validate=ma.validate.Range(min=1, max=2**31 - 1))
    seed = ma.fields.Integer(allow_none=True, strict=True, validate=ma.validate.Range(min=-(2**63), max=2**63 - 1))


class ChatCompletionSchema(SamplingSchema):
    """OpenAI's chat body plus Open WebUI's `files` (RAG), `params` and `top_k`; other keys are forwarded."""

    model = ma.fields.String(required=True, metadata={
        "description": "Model or preset id; `name` means `name:latest`", "example": "llama3.2"})
    messages = ma.fields.List(ma.fields.Dict(), required=True, metadata={
        "description": "OpenAI messages: {role, content}", "example": [{"role": "user", "content": "Hello"}]})
    stream = StrictBoolean(load_default=False)
    stream_options = ma.fields.Dict(allow_none=True)
    files = ma.fields.List(ma.fields.Dict(),
                           metadata={"description": 'RAG sources: [{"type": "file"|"collection", "id": ...}]'})
    params = ma.fields.Nested(SamplingSchema, metadata={
        "description": "Model params merged over the preset's (request wins)"})
    top_k = ma.fields.Integer(validate=ma.validate.Range(min=1, max=10_000),
                              metadata={"description": "Chunks to retrieve (default RAG_TOP_K)"})
    rag_dry_run = StrictBoolean(metadata={"description": (
        "Answer the messages the backend would get (after preset, retrieval and template) and `sources`, "
        "without calling the chat model")})


class TextCompletionRequestSchema(SamplingSchema):
    """OpenAI's legacy completions body; other keys are forwarded (OpenAI) or converted (Ollama)."""

    model = ma.fields.String(required=True, metadata={"example": "llama3.2"})
    prompt = ma.fields.Raw(required=True, metadata={
        "description": "A string (a list of strings for OpenAI connections; one string for Ollama models)",
        "example": "Once upon a time"})
    stream = StrictBoolean(load_default=False)
    stream_options = ma.fields.Dict(allow_none=True)


class EmbeddingsRequestSchema(OpenSchema):
    model = ma.fields.String(required=True)
    input = ma.fields.Raw(required=True, metadata={"description": "A string or a list of strings"})
    encoding_format = ma.fields.String(validate=ma.validate.OneOf(["float", "base64"]))


STREAMED = "JSON; with `stream: true`, chat.completion.chunk events and then `data: [DONE]`"
COMPLETION_STREAMED = "JSON; with `stream: true`, text_completion events and then `data: [DONE]`"


class CompletionSchema(Relayed):
    """The backend's OpenAI chat.completion, plus `sources` when `files` retrieved context."""

    id = ma.fields.String()
    object = ma.fields.String()
    created = ma.fields.Integer()
    model = ma.fields.String()
    choices = ma.fields.List(ma.fields.Dict())
    usage = ma.fields.Dict(allow_none=True)
    sources = ma.fields.List(ma.fields.Dict())


class TextCompletionSchema(Relayed):
    """OpenAI's `text_completion`."""

    id = ma.fields.String()
    object = ma.fields.String(metadata={"example": "text_completion"})
    created = ma.fields.Integer()
    model = ma.fields.String()
    choices = ma.fields.List(ma.fields.Dict(), metadata={
        "description": "{text, index, logprobs, finish_reason}"})
    usage = ma.fields.Dict(allow_none=True)


class EmbeddingListSchema(Relayed):
    """OpenAI's embedding list."""

    object = ma.fields.String()
    data = ma.fields.List(ma.fields.Dict(), metadata={"description": "{object, index, embedding}"})
    model = ma.fields.String()
    usage = ma.fields.Dict(allow_none=True)


def _reply(result):
    if isinstance(result, gateway.Streamed):
        return Response(result.body, mimetype=result.mimetype, headers=result.headers,
                        direct_passthrough=True)
    return result


@blp.route("/api/chat/completions")
class ChatCompletions(MethodView):
    @blp.arguments(ChatCompletionSchema())  # an instance: webargs would build one per request
    @blp.response(200, CompletionSchema, description=STREAMED)
    @blp.alt_response(200, schema=EVENT_STREAM, content_type="text/event-stream", success=True,
                      description=STREAMED)
    def post(self, body):
        """Chat with a model (OpenAI format). `stream: true` answers `text/event-stream`.

        Unknown or inaccessible model → 400 `Model not found`; 502 naming the backend when a backend's model
        list did not arrive (the model may be its) or the backend failed. `files` adds retrieved context and a
        top-level `sources` list (streaming: on the first chunk that has `choices`). `rag_dry_run: true`
        calls no chat model and answers `{object: "chat.completion.dry_run", model, messages, sources}`: the
        messages exactly as the backend would get them (after preset, retrieval and template)."""
        return _reply(gateway.chat_completion(ext(), current_user(), body))


@blp.route("/api/v1/chat/completions", endpoint="ChatCompletionsV1")
class ChatCompletionsV1(ChatCompletions):
    pass


@blp.route("/api/embeddings")
class Embeddings(MethodView):
    @blp.arguments(EmbeddingsRequestSchema())
    @blp.response(200, EmbeddingListSchema)
    def post(self, body):
        """OpenAI-format embeddings for any model of the catalogue."""
        return gateway.embeddings(ext(), current_user(), body)


@blp.route("/api/v1/embeddings", endpoint="EmbeddingsV1")
class EmbeddingsV1(Embeddings):
    pass


@blp.route("/api/v1/completions", endpoint="TextCompletionsV1")
class TextCompletions(MethodView):
    @blp.arguments(TextCompletionRequestSchema())
    @blp.response(200, TextCompletionSchema, description=COMPLETION_STREAMED)
    @blp.alt_response(200, schema=EVENT_STREAM, content_type="text/event-stream", success=True,
                      description=COMPLETION_STREAMED)
    def post(self, body):
        """Legacy text completion (OpenAI's completions API, the default of e.g. llama-index `OpenAILike`)
        for any model of the catalogue: OpenAI connections get `/completions`, Ollama models `/api/generate`.
        Unknown model → 400 `Model not found`."""
        return _reply(completions.text_completion(ext(), current_user(), body))


@blp.route("/api/completions", endpoint="TextCompletions")
class TextCompletionsUnversioned(TextCompletions):
    pass
