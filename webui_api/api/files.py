"""/api/v1/files: upload (answering when searchable), listing, content, status, deletion."""
from __future__ import annotations

import json
import time

import marshmallow as ma
from flask import Response, request, send_file
from flask.views import MethodView
from werkzeug.exceptions import RequestEntityTooLarge

from ..rag import files
from ..errors import BadRequest, Unprocessable
from ..rag import knowledge, pipeline, storage
from ..rag.collection_rows import collection_name
from .deps import access, current_user, ext
from .json_input import Blueprint, loads
from .schemas import EVENT_STREAM, JsonSchema, MessageSchema, Schema, Whole, page_number

blp = Blueprint("files", __name__, url_prefix="/api/v1/files", description="Uploaded files")

# Multipart framing and the `metadata` field on top of the file itself.
FORM_OVERHEAD = 1024 * 1024
STATUS_POLL = 0.5
STATUS_STREAM_LIMIT = 3600.0
INLINE_TYPES = ("application/pdf", "text/plain")


class UploadArgs(Schema):
    process = ma.fields.Boolean(load_default=True, metadata={"description": "Extract, chunk and embed"})
    process_in_background = ma.fields.Boolean(load_default=False, metadata={"description": (
        "Answer at once and process in the background (poll /{id}/process/status); "
        "default: answer when searchable")})


class ListArgs(Schema):
    page = page_number(load_default=1)
    content = ma.fields.Boolean(load_default=False, metadata={"description": "Add each file's extracted text"})


class SearchArgs(Schema):
    filename = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=255), metadata={
        "description": "Glob over file names: `*` any run of characters, `?` one; case-insensitive"})
    content = ma.fields.Boolean(load_default=False, metadata={"description": "Add each file's extracted text"})
    skip = ma.fields.Integer(load_default=0, validate=ma.validate.Range(min=0, max=2**31))
    limit = ma.fields.Integer(load_default=100, validate=ma.validate.Range(min=1, max=files.SEARCH_LIMIT))


class ContentArgs(Schema):
    attachment = ma.fields.Boolean(load_default=False)


class StatusArgs(Schema):
    stream = ma.fields.Boolean(load_default=False)


class ContentUpdateSchema(Schema):
    content = ma.fields.String(required=True)


def _collection(file) -> str | object:
    return collection_name(file.id) if file.status == "completed" else ma.missing


class FileDataSchema(Schema):
    """Processing state (empty for a file uploaded with process=false)."""

    status = ma.fields.String(metadata={"description": "pending, processing, completed or failed"})
    content = ma.fields.String(metadata={"description": "The extracted text"})
    error = ma.fields.String(allow_none=True)

    @ma.post_dump(pass_original=True)
    def _processed_only(self, data, file, **kwargs):
        if file.status == "stored":
            return {}
        if data.get("content") is None:
            data.pop("content", None)
        return data


class FileMetaSchema(Schema):
    name = ma.fields.String(attribute="filename")
    content_type = ma.fields.String()
    size = ma.fields.Integer()
    file_hash = ma.fields.String(metadata={"description": "sha256 of the uploaded bytes"})
    data = ma.fields.Function(lambda file: (file.meta or {}).get("data") or {}, metadata={
        "type": "object", "description": "The `metadata` form field given at upload"})
    collection_name = ma.fields.Function(_collection, metadata={
        "type": "string", "description": "Once processed: `file-<id>`"})


class FileSchema(Schema):
    """Open WebUI's file object, without any server path."""

    id = ma.fields.String()
    user_id = ma.fields.String()
    hash = ma.fields.String(attribute="text_hash", allow_none=True,
                            metadata={"description": "sha256 of the extracted text"})
    filename = ma.fields.String()
    data = Whole(FileDataSchema)
    meta = Whole(FileMetaSchema)
    created_at = ma.fields.Integer()
    updated_at = ma.fields.Integer()


class UploadDataSchema(FileDataSchema):
    class Meta(Schema.Meta):
        exclude = ("content",)


class UploadSchema(FileSchema):
    data = Whole(UploadDataSchema)
    status = ma.fields.Constant(True, metadata={"type": "boolean"})


class FilePageSchema(Schema):
    """Without `content=true` each file's extracted text is left out."""

    items = ma.fields.List(ma.fields.Nested(FileSchema))
    total = ma.fields.Integer()

    @ma.post_dump(pass_original=True)
    def _without_text(self, data, page, **kwargs):
        if not page.get("content", True):
            for item in data["items"]:
                item["data"].pop("content", None)
        return data


class ContentSchema(Schema):
    content = ma.fields.Function(lambda file: file.content or "", metadata={"type": "string"})


class FileStatusSchema(Schema):
    status = ma.fields.String(metadata={"description": "pending, processing, completed, failed or stored"})
    error = ma.fields.Function(lambda file: file.error if file.status == "failed" else ma.missing,
                               metadata={"type": "string", "nullable": True,
                                         "description": "Why processing failed"})


UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"},
                   "metadata": {"type": "string", "description": (
                       "JSON object, kept as meta.data; "
                       "`knowledge_id` adds the file to that collection")}}}}}}


@blp.route("/")
class Files(MethodView):
    @blp.arguments(UploadArgs, location="query")
    @blp.doc(requestBody=UPLOAD_BODY)
    @blp.response(200, UploadSchema)
    def post(self, args):
        """Upload a file (multipart field `file`, optional JSON `metadata` field). By default the answer
        comes once the file is searchable (`data.status` "completed"); the same bytes uploaded again by the
        same user return the existing file. Over RAG_FILE_MAX_SIZE → 413; unsupported type → 415."""
        settings = ext().settings
        limit = storage.max_upload_bytes(settings)
        request.max_content_length = None if limit is None else limit + FORM_OVERHEAD
        upload, metadata = _multipart(settings)
        file, _created = knowledge.upload(ext(), current_user(), upload.stream, upload.filename,
                                          upload.mimetype, metadata, args["process"],
                                          args["process_in_background"])
        return file

    @blp.arguments(ListArgs, location="query")
    @blp.response(200, FilePageSchema)
    def get(self, args):
        """Your files, newest first (admins: everyone's), 50 a page; `content=true` adds the extracted text."""
        items, total = files.list_files(current_user(), args["page"], args["content"])
        return {"items": items, "total": total, "content": args["content"]}


def _multipart(settings):
    try:
        upload = request.files.get("file")
        raw_meta = request.form.get("metadata")
    except RequestEntityTooLarge:
        raise storage.too_large(settings.RAG_FILE_MAX_SIZE) from None
    if upload is None:
        raise Unprocessable([{"type": "missing", "loc": ["body", "file"], "msg": "Field required",
                              "input": None}])
    metadata = None
    if raw_meta not in (None, ""):
        try:
            metadata = loads(raw_meta)
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise BadRequest("[ERROR: Invalid metadata format]")
    return upload, metadata


@blp.route("/search")
class FileSearch(MethodView):
    @blp.arguments(SearchArgs, location="query")
    @blp.response(200, FileSchema(many=True))
    def get(self, args):
        """Your files (admins: everyone's) whose name matches the `filename` glob, newest first; none
        matching is 404. Without `content=true` the extracted text is left out."""
        return files.search_files(current_user(), args["filename"], args["skip"], args["limit"],
                                  args["content"])


@blp.route("/count")
class FileCount(MethodView):
    @blp.response(200, JsonSchema(type="integer"))
    def get(self):
        """How many files you have (admins: all files)."""
        return files.count_files(current_user())


@blp.route("/all")
class AllFiles(MethodView):
    @access("admin")
    @blp.response(200, MessageSchema)
    def delete(self):
        """Delete every user's files, their stored bytes and vectors (knowledge collections stay)."""
        files.delete_all(ext())
        return {"message": "All files deleted successfully"}


@blp.route("/<string:file_id>")
class FileItem(MethodView):
    @blp.response(200, FileSchema)
    def get(self, file_id):
        """One file with its extracted text (no server path)."""
        return files.readable(current_user(), file_id)

    @blp.response(200, MessageSchema)
    def delete(self, file_id):
        """Delete the file, its bytes, and its vectors in every collection."""
        files.delete(ext(), current_user(), file_id)
        return {"message": "File deleted successfully"}


@blp.route("/<string:file_id>/content")
class FileContent(MethodView):
    @blp.arguments(ContentArgs, location="query")
    @blp.response(200, JsonSchema(type="string", format="binary"), content_type="application/octet-stream",
                  description="The stored bytes, served with the file's own content type")
    def get(self, args, file_id):
        """The original bytes with their content type (PDF and plain text inline, others as attachment)."""
        path, file = files.original(ext(), current_user(), file_id)
        inline = file.content_type.split(";")[0].strip().lower() in INLINE_TYPES and not args["attachment"]
        response = send_file(path, mimetype=file.content_type, as_attachment=not inline,
                             download_name=file.filename, conditional=True, etag=file.file_hash)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "sandbox"
        return response


@blp.route("/<string:file_id>/data/content")
class FileDataContent(MethodView):
    @blp.response(200, ContentSchema)
    def get(self, file_id):
        """The extracted text: `{"content": "..."}`."""
        return files.readable(current_user(), file_id)


@blp.route("/<string:file_id>/data/content/update")
class FileDataContentUpdate(MethodView):
    @blp.arguments(ContentUpdateSchema)
    @blp.response(200, ContentSchema)
    def post(self, body, file_id):
        """Replace the extracted text and re-index it everywhere the file is used."""
        return files.reprocess(ext(), current_user(), file_id, body["content"])


@blp.route("/<string:file_id>/process/status")
class FileStatus(MethodView):
    @blp.arguments(StatusArgs, location="query")
    @blp.response(200, FileStatusSchema)
    @blp.alt_response(200, schema=EVENT_STREAM, content_type="text/event-stream", success=True,
                      description="`stream=true`: `data: {status, error?}` events until the status settles")
    def get(self, args, file_id):
        """Processing status: pending, processing, completed, failed (with `error`), or stored
        (uploaded with process=false). `stream=true` sends SSE events until the status settles."""
        file = files.readable(current_user(), file_id)
        if not args["stream"]:
            return file
        return Response(_status_events(file_id, _STATUS.dump(file)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


_STATUS = FileStatusSchema()


def _status_events(file_id: str, first: dict):
    """SSE: one event per status change, ending at a settled status (no request context needed)."""
    status, deadline = first, time.monotonic() + STATUS_STREAM_LIMIT
    yield f"data: {json.dumps(status)}\n\n".encode()
    while status["status"] in pipeline.UNSETTLED and time.monotonic() < deadline:
        time.sleep(STATUS_POLL)
        file = files.current(file_id)
        current = _STATUS.dump(file) if file else {"status": "failed", "error": "The file was deleted."}
        if current != status:
            status = current
            yield f"data: {json.dumps(status)}\n\n".encode()
