"""/api/v1/knowledge: knowledge collections and their files."""
from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView
from flask_smorest import Blueprint

from ..rag import knowledge
from .deps import access, current_user, ext

blp = Blueprint("knowledge", __name__, url_prefix="/api/v1/knowledge", description="Knowledge collections")


class PageArgs(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    page = ma.fields.Integer(load_default=None, validate=ma.validate.Range(min=1))


class GrantSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    principal_type = ma.fields.String(required=True)
    principal_id = ma.fields.String(required=True)
    permission = ma.fields.String(required=True)


class CreateSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=255))
    description = ma.fields.String(load_default="")
    meta = ma.fields.Dict(load_default=None, allow_none=True)
    access_grants = ma.fields.List(ma.fields.Nested(GrantSchema), load_default=None, allow_none=True,
                                   metadata={"description": (
                                       "[] private (default) or the public read grant "
                                       "{principal_type: user, principal_id: *, permission: read}")})


class UpdateSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    name = ma.fields.String(validate=ma.validate.Length(min=1, max=255))
    description = ma.fields.String(allow_none=True)
    meta = ma.fields.Dict(allow_none=True)
    access_grants = ma.fields.List(ma.fields.Nested(GrantSchema), allow_none=True)


class AccessSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    access_grants = ma.fields.List(ma.fields.Nested(GrantSchema), required=True)


class FileRefSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    file_id = ma.fields.String(required=True, validate=ma.validate.Length(min=1))


class RemoveArgs(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    delete_file = ma.fields.Boolean(load_default=False,
                                    metadata={"description": "Also delete the file itself"})


@blp.route("/")
class KnowledgeList(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200)
    def get(self, args):
        """Your collections and public ones (admins: all), newest first; `page` gives 30 at a time."""
        return knowledge.list_for(current_user(), args["page"])


@blp.route("/create")
class KnowledgeCreate(MethodView):
    @blp.arguments(CreateSchema)
    @blp.response(200)
    def post(self, body):
        """Create a collection, private unless the public read grant is given."""
        return knowledge.create(current_user(), body["name"], body["description"], body["access_grants"],
                                body["meta"])


@blp.route("/<string:knowledge_id>")
class KnowledgeItem(MethodView):
    @blp.response(200)
    def get(self, knowledge_id):
        """One collection with its files and whether you may change it."""
        return knowledge.get(current_user(), knowledge_id)


@blp.route("/<string:knowledge_id>/files")
class KnowledgeFiles(MethodView):
    @blp.response(200)
    def get(self, knowledge_id):
        """The collection's files (Open WebUI's page shape, without directories)."""
        return knowledge.list_files(current_user(), knowledge_id)


@blp.route("/<string:knowledge_id>/update")
class KnowledgeUpdate(MethodView):
    @blp.arguments(UpdateSchema)
    @blp.response(200)
    def post(self, body, knowledge_id):
        """Rename, describe or share the collection (owner or admin)."""
        return knowledge.update(current_user(), knowledge_id, body)


@blp.route("/<string:knowledge_id>/access/update")
class KnowledgeAccess(MethodView):
    @blp.arguments(AccessSchema)
    @blp.response(200)
    def post(self, body, knowledge_id):
        """Make the collection public (read-only for others) or private again."""
        return knowledge.update_access(current_user(), knowledge_id, body["access_grants"])


@blp.route("/<string:knowledge_id>/file/add")
class KnowledgeFileAdd(MethodView):
    @blp.arguments(FileRefSchema)
    @blp.response(200)
    def post(self, body, knowledge_id):
        """Add a processed file: its stored vectors join the collection (no new embedding). Adding it
        again changes nothing. A file still processing is waited for."""
        return knowledge.add_file(ext(), current_user(), knowledge_id, body["file_id"])


@blp.route("/<string:knowledge_id>/file/remove")
class KnowledgeFileRemove(MethodView):
    @blp.arguments(FileRefSchema)
    @blp.arguments(RemoveArgs, location="query")
    @blp.response(200)
    def post(self, body, args, knowledge_id):
        """Take a file out of the collection; `delete_file=true` also deletes the file (if it is yours)."""
        return knowledge.remove_file(ext(), current_user(), knowledge_id, body["file_id"],
                                     args["delete_file"])


@blp.route("/<string:knowledge_id>/reset")
class KnowledgeReset(MethodView):
    @blp.response(200)
    def post(self, knowledge_id):
        """Remove every file from the collection (the files themselves are kept)."""
        return knowledge.reset(ext(), current_user(), knowledge_id)


@blp.route("/<string:knowledge_id>/delete")
class KnowledgeDelete(MethodView):
    @access("verified")
    @blp.response(200)
    def delete(self, knowledge_id):
        """Delete the collection and its index; its files are kept."""
        return knowledge.delete(ext(), current_user(), knowledge_id)
