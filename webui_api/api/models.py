"""Model listing (/api/models) and workspace models ("presets", /api/v1/models/*)."""
from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from ..gateway import presets
from .deps import access, current_user, ext
from .json_input import Blueprint
from .schemas import (TRUE, AccessGrantSchema, rendered_grants, OpenSchema, OwnerSchema, Schema, derived,
                      hide_owner_email_from_readers, name_field)

blp = Blueprint("models", __name__, description="Model listing and workspace models (presets)")


class ModelsRefreshArgs(Schema):
    refresh = ma.fields.Boolean(load_default=False, metadata={"description": "Ask the backends again now"})


class ModelIdArgs(Schema):
    id = ma.fields.String(metadata={"description": "Model id (may contain `/` and `:`)"})


class ModelListArgs(Schema):
    query = ma.fields.String(load_default=None)
    view_option = ma.fields.String(load_default=None, metadata={"description": "`created` or `shared`"})
    tag = ma.fields.String(load_default=None)
    order_by = ma.fields.String(load_default=None,
                                metadata={"description": "`name`, `created_at` or `updated_at`"})
    direction = ma.fields.String(load_default=None, metadata={"description": "`asc`; anything else = desc"})
    page = ma.fields.Integer(load_default=1, validate=ma.validate.Range(min=1))


class ModelGrantSchema(OpenSchema):
    principal_type = ma.fields.String()
    principal_id = ma.fields.String()
    permission = ma.fields.String()


class ModelFormSchema(Schema):
    """Open WebUI's ModelForm. Access: `is_public` (public read on/off), or the whole `access_grants` list."""

    id = ma.fields.String(metadata={"description": "The id clients send as `model`"})
    base_model_id = ma.fields.String(allow_none=True)
    name = name_field()
    meta = ma.fields.Dict(allow_none=True)
    params = ma.fields.Dict(allow_none=True, metadata={"description": "`system` prompt and sampling params"})
    access_grants = ma.fields.List(ma.fields.Nested(ModelGrantSchema), allow_none=True)
    is_public = ma.fields.Boolean(allow_none=True)
    is_active = ma.fields.Boolean(allow_none=True)
    commit_message = ma.fields.String(allow_none=True)


class ModelCreateFormSchema(ModelFormSchema):
    id = ma.fields.String(required=True)


class ModelAccessFormSchema(Schema):
    id = ma.fields.String()
    access_grants = ma.fields.List(ma.fields.Nested(ModelGrantSchema), allow_none=True)
    is_public = ma.fields.Boolean(allow_none=True)


class ModelListSchema(Schema):
    data = ma.fields.List(ma.fields.Dict(), metadata={"description": (
        "Open WebUI model objects: id, name, object, created, owned_by, connection_type, the backend's "
        "raw entry under `ollama` or `openai`, `info` for presets and overrides, `tags`")})


class PresetSchema(Schema):
    """A stored workspace model (Open WebUI's ModelModel)."""

    id = ma.fields.String()
    user_id = ma.fields.String()
    base_model_id = ma.fields.String(allow_none=True)
    name = ma.fields.String()
    params = derived(ma.fields.Dict(), lambda row: row.params or {})
    meta = derived(ma.fields.Dict(), lambda row: row.meta or {})
    access_grants = derived(ma.fields.List(ma.fields.Nested(AccessGrantSchema)), rendered_grants)
    is_public = ma.fields.Boolean()
    is_active = ma.fields.Boolean()
    updated_at = ma.fields.Integer()
    created_at = ma.fields.Integer()


class PresetUserSchema(PresetSchema):
    """A preset with its owner and whether the caller may change it; a reader gets `params: {}`."""

    user = ma.fields.Nested(OwnerSchema)
    write_access = ma.fields.Boolean()

    @ma.post_dump
    def _private_to_readers(self, data, **kwargs):
        if not data["write_access"]:
            data["params"] = {}
        return hide_owner_email_from_readers(data)


class PresetPageSchema(Schema):
    items = ma.fields.List(ma.fields.Nested(PresetUserSchema))
    total = ma.fields.Integer()


def _pick_id(query: dict, body: dict | None = None) -> str:
    """Per-model routes take `?id=` (ids contain `/`); the body's `id` is accepted too."""
    return presets.check_id(query.get("id") or (body or {}).get("id"))


# --- catalogue listing ------------------------------------------------------------------------

@blp.route("/api/models")
class Models(MethodView):
    @blp.arguments(ModelsRefreshArgs, location="query")
    @blp.response(200, ModelListSchema)
    def get(self, args):
        """Every model the caller may use: base models of all backends, then presets."""
        return {"data": ext().catalog.list_models(current_user(), refresh=args["refresh"])}


@blp.route("/api/v1/models", endpoint="ModelsV1")
class ModelsV1(Models):
    pass


@blp.route("/api/models/base")
class BaseModels(MethodView):
    @access("admin")
    @blp.arguments(ModelsRefreshArgs, location="query")
    @blp.response(200, ModelListSchema)
    def get(self, args):
        """Provider models only, as the backends report them (admin)."""
        return {"data": ext().catalog.base_models(refresh=args["refresh"])}


# --- presets ---------------------------------------------------------------------------------

@blp.route("/api/v1/models/create")
class CreateModel(MethodView):
    @blp.arguments(ModelCreateFormSchema)
    @blp.response(200, PresetSchema)
    def post(self, form):
        """Create a preset (a base model with its own name, system prompt and params). Taken id → 409."""
        return ext().catalog.create_preset(current_user(), form)


@blp.route("/api/v1/models/list")
class ListModels(MethodView):
    @blp.arguments(ModelListArgs, location="query")
    @blp.response(200, PresetPageSchema)
    def get(self, args):
        """Presets the caller owns or may read, inactive ones included, 30 per page."""
        items, total = presets.list_page(current_user(), **args)
        return {"items": items, "total": total}


@blp.route("/api/v1/models/")
class AllModels(MethodView):
    @blp.response(200, PresetUserSchema(many=True))
    def get(self):
        """Every preset the caller owns or may read, as an array (older Open WebUI clients)."""
        return presets.list_all(current_user())


@blp.route("/api/v1/models/base")
class OverrideRows(MethodView):
    @access("admin")
    @blp.response(200, PresetSchema(many=True))
    def get(self):
        """Rows without a base model, which rename, configure or hide a provider model (admin)."""
        return presets.list_overrides()


@blp.route("/api/v1/models/model")
class GetModel(MethodView):
    @blp.arguments(ModelIdArgs, location="query")
    @blp.response(200, PresetUserSchema)
    def get(self, args):
        """One preset. Missing or another user's private one → 404; readers get `params: {}`."""
        return presets.get(current_user(), _pick_id(args))


@blp.route("/api/v1/models/model/update")
class UpdateModel(MethodView):
    @blp.arguments(ModelIdArgs, location="query")
    @blp.arguments(ModelFormSchema)
    @blp.response(200, PresetSchema)
    def post(self, args, form):
        """Replace name, meta and params (send the whole object). Not yours → 404 if hidden, else 403."""
        return ext().catalog.update_preset(current_user(), _pick_id(args, form), form)


@blp.route("/api/v1/models/model/toggle")
class ToggleModel(MethodView):
    @blp.arguments(ModelIdArgs, location="query")
    @blp.response(200, PresetSchema)
    def post(self, args):
        """Flip `is_active`; a disabled preset is refused by chat at once, on every worker."""
        return ext().catalog.toggle_preset(current_user(), _pick_id(args))


@blp.route("/api/v1/models/model/access/update")
class UpdateModelAccess(MethodView):
    @blp.arguments(ModelIdArgs, location="query")
    @blp.arguments(ModelAccessFormSchema)
    @blp.response(200, PresetSchema)
    def post(self, args, form):
        """Replace who may use a preset: `access_grants` (public read, users, groups; `[]` private) or
        `is_public` alone."""
        return ext().catalog.set_preset_access(current_user(), _pick_id(args, form), form)


@blp.route("/api/v1/models/model/delete")
class DeleteModel(MethodView):
    @blp.arguments(ModelIdArgs, location="query")
    @blp.arguments(ModelIdArgs, required=False)
    @blp.response(200, TRUE)
    def post(self, args, body):
        """Delete a preset (`?id=` or body `{"id": ...}`) → `true`."""
        return ext().catalog.delete_preset(current_user(), _pick_id(args, body))

