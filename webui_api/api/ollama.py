"""`/ollama/...`: the Ollama API of every configured backend behind one URL, streaming intact."""
from __future__ import annotations

import marshmallow as ma
from flask import Response, request
from flask.views import MethodView

from ..errors import Unprocessable
from ..gateway import proxy
from . import validation_detail
from .deps import access, current_caller, ext
from .json_input import Blueprint
from .schemas import JsonSchema, OpenSchema, Relayed, StatusSchema, StrictBoolean, event_stream

blp = Blueprint("ollama", __name__, url_prefix="/ollama",
                description="Ollama API passthrough: model routing across backends, merged lists, admin-only "
                            "model management. An untagged model name means `:latest`; a `/{url_idx}` suffix "
                            "picks a backend. Unknown model: 404 `Model 'x' was not found` (502 naming the "
                            "backend when a backend's model list did not arrive).")

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


NDJSON = JsonSchema(type="string", description="One JSON object per line, relayed as the backend sends it")
SSE = event_stream("An OpenAI chunk relayed as the backend sends it; the last is `[DONE]`")
STREAMS = {"application/x-ndjson": NDJSON, "text/event-stream": SSE}


class ModelBody(OpenSchema):
    """Ollama's request body: the fields below are documented, any other is forwarded untouched."""

    model = ma.fields.String(required=True, metadata={
        "description": "Picks the backend; `name` means `name:latest`", "example": "llama3.2"})
    keep_alive = ma.fields.Raw()


class StreamBody(ModelBody):
    stream = StrictBoolean(metadata={"description": "Ollama streams unless this is false"})
    options = ma.fields.Dict()
    format = ma.fields.Raw()


class GenerateBody(StreamBody):
    prompt = ma.fields.String(metadata={"example": "Why is the sky blue?"})
    system = ma.fields.String()
    images = ma.fields.List(ma.fields.String())


class ChatBody(StreamBody):
    messages = ma.fields.List(ma.fields.Dict(), metadata={
        "description": "{role, content, images?}", "example": [{"role": "user", "content": "Hello"}]})
    tools = ma.fields.List(ma.fields.Dict())


class EmbedBody(ModelBody):
    input = ma.fields.Raw(metadata={"description": "A string or a list of strings", "example": "Hello"})
    options = ma.fields.Dict()


class PromptBody(ModelBody):
    prompt = ma.fields.String()
    stream = StrictBoolean()


class V1ResponsesBody(ModelBody):
    input = ma.fields.Raw(metadata={"description": "Text, or a list of input items", "example": "Hello"})
    instructions = ma.fields.String()
    stream = StrictBoolean()


class CopyBody(OpenSchema):
    source = ma.fields.String(required=True)
    destination = ma.fields.String(required=True)


class ManageBody(OpenSchema):
    """Model management: `model` names the model (backend 0 unless `/{url_idx}` or, for push, the host)."""

    model = ma.fields.String()
    insecure = ma.fields.Boolean()
    stream = StrictBoolean()


class OllamaReply(Relayed):
    """The backend's JSON answer, relayed untouched."""


class TagsSchema(Relayed):
    models = ma.fields.List(ma.fields.Dict(), metadata={"description": (
        "Ollama's entries; merged lists add `urls` (backend indexes) and `connection_type`")})


class OllamaVersionSchema(Relayed):
    version = ma.fields.String()


class V1ModelListSchema(Relayed):
    object = ma.fields.String()
    data = ma.fields.List(ma.fields.Dict(), metadata={"description": "{id, object, created, owned_by}"})


def respond(reply: proxy.Reply) -> Response:
    """A proxy.Reply as a Flask response (streamed bodies are flushed per chunk)."""
    headers = {**reply.headers, **(STREAM_HEADERS if reply.streaming else {})}
    return Response(reply.body, status=reply.status, content_type=reply.content_type, headers=headers)


def json_body() -> dict:
    # force: `curl -d` sends JSON with a form content type, and the documented examples use it
    return proxy.require_json_object(request.get_json(force=True, silent=True))


def calling_user():
    """Who calls: told of failing backends as their role allows, and named to the backend when
    ENABLE_FORWARD_USER_INFO_HEADERS is on (the route's access check has already looked them up)."""
    caller = current_caller()
    return caller.user if caller is not None else None


def _call(path: str, method: str, url_idx, body: type[OpenSchema], **options) -> Response:
    return respond(proxy.ollama_call(ext().catalog, method, path, documented_body(body), url_idx=url_idx,
                                     user=calling_user(), **options))


def documented_body(schema: type[OpenSchema]) -> dict:
    """The JSON body, forwarded as sent once the fields the document names have their documented types
    (`model: {}` reached the backend, which dropped the connection: a 502 for the client's mistake)."""
    payload = json_body()
    errors = schema(partial=True).validate(payload)  # presence: proxy's own rules (`name` may stand for `model`)
    if errors:
        raise Unprocessable(validation_detail({"json": errors}))
    return payload


def _route(path: str, name: str, methods: tuple[str, ...], level: str, doc: str, body: type[OpenSchema],
           streams: str = "", upstream_method: str = "", **options) -> None:
    """Register `/ollama{path}` and `/ollama{path}/<url_idx>` forwarding to the same Ollama path. `body` and
    `streams` document the request and the streamed answer; the body itself is forwarded as sent."""
    def view(self, url_idx: int | None = None):
        return _call(path, upstream_method or request.method, url_idx, body, **options)

    view.__doc__ = doc
    if streams:
        view = blp.alt_response(200, schema=STREAMS[streams], content_type=streams, success=True)(view)
    view = blp.response(200, OllamaReply)(view)
    view = blp.doc(requestBody={"required": True, "content": {"application/json": {"schema": body}}})(view)
    view = access(level)(view)
    cls = type(name, (MethodView,), {m: view for m in methods})
    blp.route(path, endpoint=name)(cls)
    blp.route(f"{path}/<int:url_idx>", endpoint=f"{name}_idx")(cls)


@blp.route("/")
class Root(MethodView):
    @access("public")
    @blp.response(200, StatusSchema)
    def get(self):
        """Liveness of the Ollama proxy (public): `{"status": true}`."""
        return {"status": True}


@blp.route("/api/tags", endpoint="tags")
@blp.route("/api/tags/<int:url_idx>", endpoint="tags_idx")
class Tags(MethodView):
    @blp.response(200, TagsSchema)
    def get(self, url_idx: int | None = None):
        """Models of all Ollama backends merged by name (`urls` lists the backends), or one backend's list."""
        return proxy.ollama_tags(ext().catalog, url_idx)


@blp.route("/api/version", endpoint="version")
@blp.route("/api/version/<int:url_idx>", endpoint="version_idx")
class Version(MethodView):
    @blp.response(200, OllamaVersionSchema)
    def get(self, url_idx: int | None = None):
        """The lowest Ollama version among the backends that answer."""
        return proxy.ollama_version(ext().catalog, url_idx)


@blp.route("/api/ps", endpoint="ps")
@blp.route("/api/ps/<int:url_idx>", endpoint="ps_idx")
class Ps(MethodView):
    @access("admin")
    @blp.response(200, TagsSchema)
    def get(self, url_idx: int | None = None):
        """Models currently loaded on the backends (admin)."""
        return proxy.ollama_ps(ext().catalog, url_idx)


@blp.route("/v1/models", endpoint="v1_models")
class V1Models(MethodView):
    @blp.response(200, V1ModelListSchema)
    def get(self):
        """Ollama's OpenAI-compatible model list over all backends."""
        return proxy.ollama_v1_models(ext().catalog)


_route("/api/show", "Show", ("post",), "verified", "Model details from the backend hosting the model.",
       ModelBody)
_route("/api/generate", "Generate", ("post",), "verified",
       "Text generation; streams NDJSON unless `stream: false` (Ollama's default is to stream).",
       GenerateBody, "application/x-ndjson")
_route("/api/chat", "Chat", ("post",), "verified",
       "Chat; streams NDJSON unless `stream: false` (Ollama's default is to stream).",
       ChatBody, "application/x-ndjson")
_route("/api/embed", "Embed", ("post",), "verified", "Embeddings for a string or a list of strings.",
       EmbedBody)
_route("/api/embeddings", "Embeddings", ("post",), "verified", "Legacy single-prompt embeddings.", PromptBody)
_route("/v1/chat/completions", "V1Chat", ("post",), "verified", "Ollama's OpenAI-compatible chat endpoint.",
       ChatBody, "text/event-stream")
_route("/v1/completions", "V1Completions", ("post",), "verified", "Ollama's OpenAI-compatible completions.",
       PromptBody, "text/event-stream")
_route("/v1/embeddings", "V1Embeddings", ("post",), "verified", "Ollama's OpenAI-compatible embeddings.",
       EmbedBody)
_route("/v1/responses", "V1Responses", ("post",), "verified",
       "Ollama's OpenAI-compatible Responses API (Ollama 0.13.3+, stateless).", V1ResponsesBody,
       "text/event-stream")
_route("/api/pull", "Pull", ("post",), "admin",
       "Pull a model (admin); backend 0 unless `/{url_idx}`. Streams progress.",
       ManageBody, "application/x-ndjson", model_key=None, default_idx=0, changes_models=True)
_route("/api/push", "Push", ("post", "delete"), "admin",
       "Push a model to a registry (admin). POST like Ollama; DELETE accepted for Open WebUI compatibility.",
       ManageBody, "application/x-ndjson", upstream_method="POST", changes_models=True)
_route("/api/create", "Create", ("post",), "admin", "Create a model (admin); backend 0 unless `/{url_idx}`.",
       ManageBody, "application/x-ndjson", model_key=None, default_idx=0, changes_models=True)
_route("/api/copy", "Copy", ("post",), "admin", "Copy a model on the backend hosting `source` (admin).",
       CopyBody, model_key="source", changes_models=True)
_route("/api/delete", "Delete", ("delete",), "admin", "Delete a model from the backend hosting it (admin).",
       ModelBody, changes_models=True)
