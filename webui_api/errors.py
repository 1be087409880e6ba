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


class KeptAsFailed(ApiError):
    """Processing failed but the file was kept as 'failed': the cause's status, its detail plus advice."""

    def __init__(self, cause: ApiError, advice: str):
        super().__init__(f"{cause.detail} {advice}", cause.status, cause.headers)


class ConfigError(Exception):
    """The configuration cannot be used; raised at start-up with a one-line explanation."""
