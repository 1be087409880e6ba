"""Wire shapes shared by several blueprints: the base Schema, the error body, and relayed backend JSON."""
from __future__ import annotations

import re

import marshmallow as ma

from ..auth import policy

DETAIL_ITEM = {"type": "object", "required": ["loc", "msg", "type"], "properties": {
    "loc": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}},
    "msg": {"type": "string"}, "type": {"type": "string"}}}


class Schema(ma.Schema):
    """Base of every schema here: a body's unknown keys are ignored (Open WebUI clients send extras)."""

    class Meta:
        unknown = ma.EXCLUDE


class OpenSchema(Schema):
    """A body whose undeclared keys are kept: what a backend accepts is not ours to narrow."""

    class Meta:
        unknown = ma.INCLUDE


class Relayed(OpenSchema):
    """A backend's JSON answered as it came: the declared fields document it, nothing reshapes it."""

    def dump(self, obj, *, many=None):
        return obj


OPENAI_ERROR = {"type": "object", "required": ["message", "type", "code"], "properties": {
    "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"}}}


class ErrorSchema(Schema):
    """Every error body: a message, or (422) FastAPI-style items `{loc, msg, type}`; beside it, on the
    OpenAI-compatible routes OpenAI's error object, on `/ollama/api/*` Ollama's error string."""

    detail = ma.fields.Raw(required=True, metadata={"oneOf": [
        {"type": "string"}, {"type": "array", "items": DETAIL_ITEM}]})
    error = ma.fields.Raw(metadata={
        "oneOf": [OPENAI_ERROR, {"type": "string"}],
        "description": "The same reason for the route's own clients: `{message, type, code}` on "
                       "`/api/chat/completions`, `/api/embeddings`, `/api/models`, `/openai/*` and "
                       "`/ollama/v1/*`; a string on `/ollama/api/*`; absent elsewhere"})


class StatusSchema(Schema):
    status = ma.fields.Boolean()


class MessageSchema(Schema):
    message = ma.fields.String()


class JsonSchema(dict):
    """A plain JSON Schema for an answer that is not an object (a bare `true`, a stream of events):
    flask-smorest documents it as given, and `dump` returns the view's value untouched."""

    def dump(self, obj, *, many=None):
        return obj


TRUE = JsonSchema(type="boolean", description="Always `true`")


def event_stream(data: str) -> JsonSchema:
    """One Server-Sent Event: how OpenAPI 3.0 tools read a text/event-stream schema (3.2 calls it `itemSchema`)."""
    return JsonSchema(type="object", required=["data"], description="One Server-Sent Event", properties={
        "data": {"type": "string", "description": data}, "event": {"type": "string"}, "id": {"type": "string"},
        "retry": {"type": "integer"}})


EVENT_STREAM = event_stream("One JSON object per event, as it is produced")


class AccessGrantSchema(Schema):
    """Open WebUI's access grant: `user`/`*`/`read` is public read; otherwise a user or group id with `read`
    or `write` (which includes read here)."""

    id = ma.fields.String()
    resource_type = ma.fields.String()
    resource_id = ma.fields.String()
    principal_type = ma.fields.String()
    principal_id = ma.fields.String()
    permission = ma.fields.String()
    created_at = ma.fields.Integer()


class UserSchema(Schema):
    """An account as its owner and admins see it (never the password hash or key)."""

    id = ma.fields.String()
    email = ma.fields.String()
    name = ma.fields.String()
    role = ma.fields.String()
    profile_image_url = ma.fields.Function(
        lambda user: user.profile_image_url or f"/api/v1/users/{user.id}/profile/image",
        metadata={"type": "string"})


class UploaderSchema(Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    role = ma.fields.String()


class OwnerSchema(UploaderSchema):
    """The owner of a shared object; `email` only for the owner themself and admins."""

    email = ma.fields.String()


def hide_owner_email_from_readers(data: dict) -> dict:
    """Readers of a shared object do not learn its owner's email (writers do: the owner and admins)."""
    if not data["write_access"]:
        data["user"].pop("email", None)
    return data


class Whole(ma.fields.Nested):
    """A sub-object dumped from the parent object itself (e.g. a file row's columns shown as `meta`)."""

    def get_value(self, obj, attr, accessor=None, default=ma.missing):
        return obj


def derived(field: ma.fields.Field, compute) -> ma.fields.Field:
    """`field`, documented and dumped as declared, with its value computed from the object (a grant list
    rendered from a row) instead of read from an attribute of the same name."""
    field.get_value = lambda obj, attr, accessor=None, default=ma.missing: compute(obj)
    return field


def rendered_grants(seen) -> list[dict]:
    """The policy's grant list for a row, or for a caller's view of one (`Collection.kb`, `Seen.row`)."""
    row = getattr(seen, "kb", None) or getattr(seen, "row", None) or seen
    return policy.render_grants(row)


MAX_PAGE = 1_000_000  # keeps the SQL offset (page - 1) * size a 64-bit integer


def page_number(**kwargs) -> ma.fields.Integer:
    """A 1-based page number of a listing."""
    return ma.fields.Integer(validate=ma.validate.Range(min=1, max=MAX_PAGE), **kwargs)


# Bounds of stored text: a name shows in every list, so a megabyte of it would be sent with each listing.
NAME_MAX = 255
DESCRIPTION_MAX = 10_000
IMAGE_URL_MAX = 2 * 1024 * 1024  # a data:image/ URL carries the picture itself
_IMAGE_URL = re.compile(r"^(https?://[^\s]+|data:image/[-+.\w]+[;,][^\s]*)$", re.IGNORECASE)


def name_field(min_length: int = 1, **kwargs) -> ma.fields.String:
    """A stored name: not empty (unless a later rule words that itself), at most NAME_MAX characters."""
    return ma.fields.String(validate=ma.validate.Length(min=min_length, max=NAME_MAX), **kwargs)


def description_field(**kwargs) -> ma.fields.String:
    """A stored description: at most DESCRIPTION_MAX characters."""
    return ma.fields.String(validate=ma.validate.Length(max=DESCRIPTION_MAX), **kwargs)


def image_url_field(**kwargs) -> ma.fields.String:
    """A picture a browser will load: an http(s): URL or a data:image/ URL (never javascript: and the like)."""
    return ma.fields.String(validate=[
        ma.validate.Length(max=IMAGE_URL_MAX),
        ma.validate.Regexp(_IMAGE_URL, error="Must be an http(s): or data:image/ URL.")], **kwargs)


class StrictBoolean(ma.fields.Boolean):
    """JSON `true` or `false` only: "yes", "false" or 1 are refused, not read as a truth value."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value
