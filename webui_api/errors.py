"""Domain errors: plain exceptions carrying an HTTP status and a client-facing detail."""
from __future__ import annotations

from typing import Any

# Messages a compatible client may match on (Open WebUI's exact strings).
NOT_FOUND = "We could not find what you're looking for :/"
ACCESS_PROHIBITED = ("You do not have permission to access this resource. "
                     "Please contact your administrator for assistance.")
INVALID_TOKEN = "Your session has expired or the token is invalid. Please sign in again."
NOT_AUTHENTICATED = "Not authenticated"
EMPTY_CONTENT = ("The content provided is empty. Please ensure that there is text or data present "
                 "before proceeding.")
FILE_NOT_PROCESSED = ("Extracted content is not available for this file. Please ensure that the file "
                      "is processed before proceeding.")
MODEL_NOT_FOUND = "Model not found"


class ApiError(Exception):
    """An error the client should see as `{"detail": detail}` with `status`."""

    status = 500
    default_detail = "Internal server error"

    def __init__(self, detail: Any = None, status: int | None = None, headers: dict | None = None):
        self.detail = self.default_detail if detail is None else detail
        if status is not None:
            self.status = status
        self.headers = headers or {}
        super().__init__(self.detail if isinstance(self.detail, str) else repr(self.detail))


class BadRequest(ApiError):
    status, default_detail = 400, "Bad request"


class Unauthorized(ApiError):
    status, default_detail = 401, NOT_AUTHENTICATED


class Forbidden(ApiError):
    status, default_detail = 403, ACCESS_PROHIBITED


class NotFound(ApiError):
    status, default_detail = 404, NOT_FOUND


class Conflict(ApiError):
    status, default_detail = 409, "Conflict"


class PayloadTooLarge(ApiError):
    status, default_detail = 413, "Payload too large"


class UnsupportedMediaType(ApiError):
    status, default_detail = 415, "Unsupported media type"


class Unprocessable(ApiError):
    status, default_detail = 422, "Unprocessable entity"


class RateLimited(ApiError):
    status, default_detail = 429, "API rate limit exceeded"


class ServiceUnavailable(ApiError):
    status, default_detail = 503, "Service unavailable"


class UpstreamError(ApiError):
    """A backend could not be reached or failed; `detail` names the backend, never its key."""

    status, default_detail = 502, "Upstream backend error"


class UpstreamTimeout(UpstreamError):
    status, default_detail = 504, "Upstream backend timed out"


class UnusableContent(ApiError):
    """The file's own content is unusable (empty, unreadable, unsupported), not a backend failing."""

    status, default_detail = 400, EMPTY_CONTENT

    @classmethod
    def because(cls, cause: ApiError) -> "UnusableContent":
        return cls(cause.detail, cause.status, cause.headers)


def sentences(*parts: str) -> str:
    """Texts joined as sentences: each closed with a full stop unless it already ends with one."""
    parts = [part.strip() for part in parts if part and part.strip()]
    return " ".join(part if part.endswith((".", "!", "?")) else part + "." for part in parts)


class KeptAsFailed(ApiError):
    """Processing failed but the file was kept as 'failed': the cause's status, its detail, then where the file
    is and how to retry it once `remedy` holds (over HTTP in the detail; the CLI asks advise() for its own)."""

    HTTP_RETRY = "process it again with POST /api/v1/retrieval/process/file"

    def __init__(self, cause: ApiError, file_id: str, remedy: str):
        self.cause, self.file_id, self.remedy = cause, file_id, remedy
        super().__init__(self.advise(self.HTTP_RETRY), cause.status, cause.headers)

    def advise(self, retry: str) -> str:
        return sentences(str(self.cause.detail),
                         f"The file was kept as {self.file_id} with status 'failed'; {retry} once {self.remedy}")


class ConfigError(Exception):
    """The configuration cannot be used; raised at start-up with a one-line explanation."""


# OpenAI's error `type` and `code` by status: the SDKs pick their exception class by status and show the
# `message`; these names only help a reader tell failures apart.
_OPENAI_KINDS = {
    400: ("invalid_request_error", "bad_request"), 401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"), 404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"), 409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"), 422: ("invalid_request_error", "invalid_value"),
    429: ("rate_limit_error", "rate_limit_exceeded"), 500: ("server_error", "internal_error"),
    502: ("upstream_error", "upstream_error"), 503: ("server_error", "service_unavailable"),
    504: ("upstream_error", "upstream_timeout")}


def openai_error(detail: Any, status: int) -> dict:
    """OpenAI's error object `{message, type, code}` for a detail (a text or 422 `{loc, msg}` items)."""
    kind, code = _OPENAI_KINDS.get(status) or (
        "server_error" if status >= 500 else "invalid_request_error", f"http_{status}")
    if detail == MODEL_NOT_FOUND:
        code = "model_not_found"  # OpenAI's own code for it
    return {"message": error_message(detail), "type": kind, "code": code}


def error_message(detail: Any) -> str:
    """A detail as one line of text: validation items read `body.model: Missing data for required field.`"""
    if isinstance(detail, list):
        return "; ".join(_item_message(item) for item in detail)
    return str(detail)


def _item_message(item: Any) -> str:
    if isinstance(item, dict) and "msg" in item:
        where = ".".join(str(part) for part in item.get("loc") or [])
        return f"{where}: {item['msg']}" if where else str(item["msg"])
    return str(item)
