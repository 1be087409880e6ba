"""/api/v1/files: upload (answering when searchable), listing, content, status, deletion."""
from __future__ import annotations

import json
import time

import marshmallow as ma
from flask import Response, request, send_file
from flask.views import MethodView
from flask_smorest import Blueprint
from werkzeug.exceptions import RequestEntityTooLarge

from ..rag import files
from ..db import File
from ..errors import BadRequest, Unprocessable
from ..rag import knowledge, pipeline, storage
from .deps import access, current_user, ext

blp = Blueprint("files", __name__, url_prefix="/api/v1/files", description="Uploaded files")

# Multipart framing and the `metadata` field on top of the file itself.
FORM_OVERHEAD = 1024 * 1024
STATUS_POLL = 0.5
STATUS_STREAM_LIMIT = 3600.0
INLINE_TYPES = ("application/pdf", "text/plain")


class UploadArgs(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    process = ma.fields.Boolean(load_default=True, metadata={"description": "Extract, chunk and embed"})
    process_in_background = ma.fields.Boolean(load_default=False, metadata={"description": (
        "Answer at once and process in the background (poll /{id}/process/status); "
        "default: answer when searchable")})


class ListArgs(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    page = ma.fields.Integer(load_default=None, validate=ma.validate.Range(min=1))
    content = ma.fields.Boolean(load_default=True)


class ContentArgs(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    attachment = ma.fields.Boolean(load_default=False)


class StatusArgs(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    stream = ma.fields.Boolean(load_default=False)


class ContentUpdateSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    content = ma.fields.String(required=True)


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
    @blp.response(200)
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
        return files.upload_dict(file)

    @blp.arguments(ListArgs, location="query")
    @blp.response(200)
    def get(self, args):
        """Your files, newest first (admins: everyone's); `page` gives 50 at a time, `content=false` leaves
        out the extracted text."""
        return files.list_files(current_user(), args["page"], args["content"])


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
            metadata = json.loads(raw_meta)
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise BadRequest("[ERROR: Invalid metadata format]")
    return upload, metadata


@blp.route("/all")
class AllFiles(MethodView):
    @access("admin")
    @blp.response(200)
    def delete(self):
        """Delete every user's files, their stored bytes and vectors (knowledge collections stay)."""
        return files.delete_all(ext())


@blp.route("/<string:file_id>")
class FileItem(MethodView):
    @blp.response(200)
    def get(self, file_id):
        """One file with its extracted text (no server path)."""
        return files.to_dict(files.readable(current_user(), file_id))

    @blp.response(200)
    def delete(self, file_id):
        """Delete the file, its bytes, and its vectors in every collection."""
        return files.delete(ext(), current_user(), file_id)


@blp.route("/<string:file_id>/content")
class FileContent(MethodView):
    @blp.arguments(ContentArgs, location="query")
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
    @blp.response(200)
    def get(self, file_id):
        """The extracted text: `{"content": "..."}`."""
        return files.data_content(current_user(), file_id)


@blp.route("/<string:file_id>/data/content/update")
class FileDataContentUpdate(MethodView):
    @blp.arguments(ContentUpdateSchema)
    @blp.response(200)
    def post(self, body, file_id):
        """Replace the extracted text and re-index it everywhere the file is used."""
        return files.update_content(ext(), current_user(), file_id, body["content"])


@blp.route("/<string:file_id>/process/status")
class FileStatus(MethodView):
    @blp.arguments(StatusArgs, location="query")
    def get(self, args, file_id):
        """Processing status: pending, processing, completed, failed (with `error`), or stored
        (uploaded with process=false). `stream=true` sends SSE events until the status settles."""
        status = files.process_status(current_user(), file_id)
        if not args["stream"]:
            return status
        return Response(_status_events(file_id, status), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _status_events(file_id: str, first: dict):
    """SSE: one event per status change, ending at a settled status (no request context needed)."""
    status, deadline = first, time.monotonic() + STATUS_STREAM_LIMIT
    yield f"data: {json.dumps(status)}\n\n".encode()
    while status["status"] in pipeline.UNSETTLED and time.monotonic() < deadline:
        time.sleep(STATUS_POLL)
        file = File.get_or_none(File.id == file_id)
        current = files.status_dict(file) if file else {"status": "failed", "error": "The file was deleted."}
        if current != status:
            status = current
            yield f"data: {json.dumps(status)}\n\n".encode()
