"""/api/v1/knowledge: knowledge collections and their files."""
from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from ..rag import knowledge
from .deps import access, current_user, ext
from .files import FileMetaSchema, FileSchema
from .json_input import Blueprint
from .schemas import (TRUE, AccessGrantSchema, rendered_grants, OwnerSchema, Schema, UploaderSchema, Whole, derived,
                      description_field, hide_owner_email_from_readers, name_field, page_number)

blp = Blueprint("knowledge", __name__, url_prefix="/api/v1/knowledge", description="Knowledge collections")


class PageArgs(Schema):
    page = page_number(load_default=None)


class CollectionArgs(Schema):
    page = page_number(load_default=1, metadata={
        "description": f"Which {knowledge.MEMBER_PAGE_SIZE} of the files `files` lists"})


class MemberArgs(Schema):
    """Open WebUI's `/{id}/files` parameters (there are no directories here)."""

    query = ma.fields.String(load_default=None, metadata={"description": "Part of the file name"})
    view_option = ma.fields.String(load_default=None, validate=ma.validate.OneOf(["created", "shared"]),
                                   metadata={"description": "Files you uploaded, or others uploaded"})
    order_by = ma.fields.String(load_default=None, validate=ma.validate.OneOf(list(knowledge.SORTABLE)),
                                metadata={"description": "Default: the newest added first"})
    direction = ma.fields.String(load_default="desc", validate=ma.validate.OneOf(["asc", "desc"]))
    page = page_number(load_default=1)
    limit = ma.fields.Integer(load_default=knowledge.MEMBER_PAGE_SIZE,
                              validate=ma.validate.Range(min=1, max=knowledge.MAX_MEMBER_PAGE))
    include_content = ma.fields.Boolean(load_default=False, metadata={"description": "Add `data.content`"})


class GrantSchema(Schema):
    principal_type = ma.fields.String(required=True)
    principal_id = ma.fields.String(required=True)
    permission = ma.fields.String(required=True)


class CreateSchema(Schema):
    name = name_field(required=True)
    description = description_field(load_default="")
    meta = ma.fields.Dict(load_default=None, allow_none=True)
    access_grants = ma.fields.List(ma.fields.Nested(GrantSchema), load_default=None, allow_none=True,
                                   metadata={"description": (
                                       "[] private (default); {principal_type: user, principal_id: *, "
                                       "permission: read} public; user or group ids with read or write")})


class UpdateSchema(Schema):
    name = name_field()
    description = description_field(allow_none=True)
    meta = ma.fields.Dict(allow_none=True)
    access_grants = ma.fields.List(ma.fields.Nested(GrantSchema), allow_none=True)


class AccessSchema(Schema):
    access_grants = ma.fields.List(ma.fields.Nested(GrantSchema), required=True)


class FileRefSchema(Schema):
    file_id = ma.fields.String(required=True, validate=ma.validate.Length(min=1))


class BatchEntrySchema(Schema):
    """One file of Open WebUI's batch/add body (a JSON array of these)."""

    file_id = ma.fields.String(required=True, validate=ma.validate.Length(min=1))
    directory_id = ma.fields.String(load_default=None, allow_none=True,
                                    metadata={"description": "Ignored: there are no directories here"})

    @ma.pre_load(pass_many=True)
    def _bounded(self, data, many, **kwargs):
        if many and isinstance(data, list):
            knowledge.check_batch_size(len(data))  # before marshmallow loads each of them
        return data


class BatchResultSchema(Schema):
    file_id = ma.fields.String()
    status = ma.fields.String(metadata={"description": "completed (in the collection) or failed"})
    error = ma.fields.String(metadata={"description": "Why the file was not added (failed only)"})


class WarningsSchema(Schema):
    message = ma.fields.String()
    errors = ma.fields.List(ma.fields.String(), metadata={"description": "`<file id>: <reason>` each"})


class RemoveArgs(Schema):
    delete_file = ma.fields.Boolean(load_default=False,
                                    metadata={"description": "Also delete the file itself"})


class MemberStatusSchema(Schema):
    status = ma.fields.String()


def _in_collection(entries: list[dict], collection) -> list[dict]:
    """A member file's `meta.collection_name` names the collection it is listed in."""
    for entry in entries:
        entry["meta"]["collection_name"] = collection.id
    return entries


class MemberFileSchema(Schema):
    """A file as a collection lists it."""

    id = ma.fields.String()
    hash = ma.fields.String(attribute="text_hash", allow_none=True)
    meta = Whole(FileMetaSchema)
    data = Whole(MemberStatusSchema)
    created_at = ma.fields.Integer()
    updated_at = ma.fields.Integer()


class KnowledgeSchema(Schema):
    id = ma.fields.String()
    user_id = ma.fields.String()
    name = ma.fields.String()
    description = ma.fields.String()
    meta = ma.fields.Dict(allow_none=True)
    access_grants = derived(ma.fields.List(ma.fields.Nested(AccessGrantSchema)), rendered_grants)
    created_at = ma.fields.Integer()
    updated_at = ma.fields.Integer()
    files = ma.fields.List(ma.fields.Nested(MemberFileSchema), allow_none=True, dump_default=None, metadata={
        "description": f"One page ({knowledge.MEMBER_PAGE_SIZE}) of the files, the newest added first; "
                       "all of them: `/{id}/files`"})

    @ma.post_dump(pass_original=True)
    def _members_in_collection(self, data, collection, **kwargs):
        _in_collection(data.get("files") or [], collection)
        return data


class KnowledgeFilesSchema(KnowledgeSchema):
    """A collection with its files and whether the caller may change it."""

    write_access = ma.fields.Boolean()


class _AsBuilt(ma.fields.List):
    """A list documented by its item schema but dumped as given: up to 10,000 rows built in that shape
    already would cost more to re-serialise than the batch itself."""

    def _serialize(self, value, attr, obj, **kwargs):
        return value


class BatchAddedSchema(KnowledgeFilesSchema):
    """Open WebUI's answer with the per-file results it computes but drops: `results` for every file named,
    `warnings` (Open WebUI's shape) only when some failed."""

    results = _AsBuilt(ma.fields.Nested(BatchResultSchema), metadata={"description": "Per file, in request order"})
    warnings = derived(ma.fields.Nested(WarningsSchema), lambda added: _warnings(added.results))


def _warnings(results: list[dict]):
    failed = [f"{r['file_id']}: {r['error']}" for r in results if r["status"] == "failed"]
    return {"message": "Some files failed to process", "errors": failed} if failed else ma.missing


class KnowledgeSummarySchema(KnowledgeSchema):
    """A listed collection: its owner (the email only for those who may change it) and file count."""

    class Meta(Schema.Meta):
        exclude = ("files",)

    user = ma.fields.Nested(OwnerSchema)
    file_count = ma.fields.Integer()
    write_access = ma.fields.Boolean()

    @ma.post_dump
    def _owner_email_for_writers(self, data, **kwargs):
        return hide_owner_email_from_readers(data)


class KnowledgePageSchema(Schema):
    items = ma.fields.List(ma.fields.Nested(KnowledgeSummarySchema))
    total = ma.fields.Integer()


class EntryDataSchema(MemberStatusSchema):
    content = ma.fields.String(metadata={"description": "The extracted text (`include_content=true`)"})

    @ma.post_dump
    def _text_when_asked(self, data, **kwargs):
        if data.get("content") is None:
            data.pop("content", None)
        return data


class FileEntrySchema(FileSchema):
    data = Whole(EntryDataSchema)
    directory_id = ma.fields.Constant(None, metadata={"type": "string", "nullable": True})
    directory_path = ma.fields.Constant("", metadata={"type": "string"})
    has_original = ma.fields.Constant(True, metadata={"type": "boolean"})
    user = ma.fields.Nested(UploaderSchema)


class FileEntryPageSchema(Schema):
    """Open WebUI's page of a collection's files (no directories exist here)."""

    items = ma.fields.List(ma.fields.Nested(FileEntrySchema), attribute="files")
    directories = ma.fields.Constant([], metadata={"type": "array", "items": {}})
    breadcrumbs = ma.fields.Constant([], metadata={"type": "array", "items": {}})
    total = ma.fields.Integer(attribute="file_count")

    @ma.post_dump(pass_original=True)
    def _members_in_collection(self, data, collection, **kwargs):
        _in_collection(data["items"], collection)
        return data


@blp.route("/")
class KnowledgeList(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, KnowledgePageSchema)
    def get(self, args):
        """Your collections and public ones (admins: all), newest first; `page` gives 30 at a time."""
        items, total = knowledge.list_for(current_user(), args["page"])
        return {"items": items, "total": total}


@blp.route("/create")
class KnowledgeCreate(MethodView):
    @blp.arguments(CreateSchema)
    @blp.response(200, KnowledgeSchema)
    def post(self, body):
        """Create a collection, private unless the public read grant is given."""
        return knowledge.create(current_user(), body["name"], body["description"], body["access_grants"],
                                body["meta"])


@blp.route("/<string:knowledge_id>")
class KnowledgeItem(MethodView):
    @blp.arguments(CollectionArgs, location="query")
    @blp.response(200, KnowledgeFilesSchema)
    def get(self, args, knowledge_id):
        """One collection with a page of its files (the newest added first; all of them: `/{id}/files`)
        and whether you may change it."""
        return knowledge.get(current_user(), knowledge_id, args["page"])


@blp.route("/<string:knowledge_id>/files")
class KnowledgeFiles(MethodView):
    @blp.arguments(MemberArgs, location="query")
    @blp.response(200, FileEntryPageSchema)
    def get(self, args, knowledge_id):
        """A page of the collection's files, `total` counting all that match (Open WebUI's page shape,
        without directories)."""
        return knowledge.files_of(current_user(), knowledge_id, knowledge.MemberQuery(**args))


@blp.route("/<string:knowledge_id>/update")
class KnowledgeUpdate(MethodView):
    @blp.arguments(UpdateSchema)
    @blp.response(200, KnowledgeFilesSchema)
    def post(self, body, knowledge_id):
        """Rename, describe or share the collection (owner or admin)."""
        return knowledge.update(current_user(), knowledge_id, body)


@blp.route("/<string:knowledge_id>/access/update")
class KnowledgeAccess(MethodView):
    @blp.arguments(AccessSchema)
    @blp.response(200, KnowledgeFilesSchema)
    def post(self, body, knowledge_id):
        """Replace who may read or change the collection: public read, users, groups; `[]` private."""
        return knowledge.update_access(current_user(), knowledge_id, body["access_grants"])


@blp.route("/<string:knowledge_id>/file/add")
class KnowledgeFileAdd(MethodView):
    @blp.arguments(FileRefSchema)
    @blp.response(200, KnowledgeFilesSchema)
    def post(self, body, knowledge_id):
        """Add a processed file: its stored vectors join the collection (no new embedding). Adding it
        again changes nothing. A file still processing is waited for."""
        return knowledge.add_file(ext(), current_user(), knowledge_id, body["file_id"])


@blp.route("/<string:knowledge_id>/files/batch/add")
class KnowledgeFilesBatchAdd(MethodView):
    @blp.arguments(BatchEntrySchema(many=True))
    @blp.response(200, BatchAddedSchema)
    def post(self, body, knowledge_id):
        """Add many processed files (a JSON array of `{file_id}`, at most 10,000 a request) in one
        transaction: their stored vectors join the collection (no new embedding). A file that
        cannot be added fails alone (`results`, `warnings`); files already in it are kept."""
        return knowledge.add_files(ext(), current_user(), knowledge_id, [entry["file_id"] for entry in body])


@blp.route("/<string:knowledge_id>/file/update")
class KnowledgeFileUpdate(MethodView):
    @blp.arguments(FileRefSchema)
    @blp.response(200, KnowledgeFilesSchema)
    def post(self, body, knowledge_id):
        """Re-index a file of the collection from its stored vectors (no new embedding); a file not in it
        is 404."""
        return knowledge.update_file(ext(), current_user(), knowledge_id, body["file_id"])


@blp.route("/<string:knowledge_id>/file/remove")
class KnowledgeFileRemove(MethodView):
    @blp.arguments(FileRefSchema)
    @blp.arguments(RemoveArgs, location="query")
    @blp.response(200, KnowledgeFilesSchema)
    def post(self, body, args, knowledge_id):
        """Take a file out of the collection; `delete_file=true` also deletes the file (if it is yours)."""
        return knowledge.remove_file(ext(), current_user(), knowledge_id, body["file_id"],
                                     args["delete_file"])


@blp.route("/<string:knowledge_id>/reset")
class KnowledgeReset(MethodView):
    @blp.response(200, KnowledgeFilesSchema)
    def post(self, knowledge_id):
        """Remove every file from the collection (the files themselves are kept)."""
        return knowledge.reset(ext(), current_user(), knowledge_id)


@blp.route("/<string:knowledge_id>/delete")
class KnowledgeDelete(MethodView):
    @access("verified")
    @blp.response(200, TRUE)
    def delete(self, knowledge_id):
        """Delete the collection and its index; its files are kept."""
        return knowledge.delete(ext(), current_user(), knowledge_id)
