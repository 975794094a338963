"""Client mistakes as exceptions with an HTTP status and a stable code (and headers, such as ``Retry-After``).

They are raised anywhere, and rendered as JSON in one place: ``service.http.errors`` for what reaches the app,
the front door's worker for what gunicorn refuses before it.
"""

from __future__ import annotations

from gunicorn.http import errors as http_errors


class ClientError(Exception):
    """A request the service will not serve; ``headers`` travel with the answer (``Retry-After``, ...)."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class MissingImage(ClientError):
    code = "missing_image"


class InvalidUpload(ClientError):
    code = "invalid_upload"


class InvalidImage(ClientError):
    code = "invalid_image"


class InvalidParameter(ClientError):
    code = "invalid_parameter"


class TooManyImages(ClientError):
    code = "too_many_images"


class InvalidTensor(ClientError):
    code = "invalid_tensor"


class UnknownModel(ClientError):
    status = 404
    code = "unknown_model"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class UnknownVersion(ClientError):
    status = 404
    code = "unknown_version"


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"


class ImageTooLarge(ClientError):
    status = 422
    code = "image_too_large"


class RequestTooLarge(ClientError):
    """All of a request's images together would cost more to decode than one request may."""

    status = 413
    code = "request_too_large"


class ServiceBusy(ClientError):
    """The worker is at its budget (request bytes in memory, large decodes); the client should retry shortly."""

    status = 503
    code = "busy"

    def __init__(self, message: str, retry_after_seconds: int = 1):
        super().__init__(message, {"Retry-After": str(retry_after_seconds)})


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class NotReady(ClientError):
    status = 503
    code = "not_ready"


class Unauthorized(ClientError):
    """No credential where one is needed (an API key, the feedback token)."""

    status = 401
    code = "unauthorized"


class Forbidden(ClientError):
    """A credential that is wrong, revoked, or not allowed what the request asks."""

    status = 403
    code = "forbidden"


class RateLimited(ClientError):
    """Past a rate or quota; ``Retry-After`` says when the request could pass."""

    status = 429
    code = "rate_limited"


class BufferFull(ConnectionError):
    """Raised by the worker's socket while a request is read: receiving more would take the worker past
    MAX_BUFFERED_BYTES (service/front_door/worker.py). An OSError, so Werkzeug reports it as a cut-off body."""


class UploadTooSlow(TimeoutError):
    """Raised by the worker's socket: a body has taken BODY_TIMEOUT_SECONDS and arrives slower than
    MIN_UPLOAD_RATE on average."""


# What gunicorn's own parser refuses, before the app runs, -> (status, reason, code); the worker answers these in
# the same JSON shapes (service/front_door/worker.py). Any other ParseException is a plain 400.
PARSE_ERRORS = (
    (http_errors.LimitRequestLine, 414, "URI Too Long", "request_line_too_long"),
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large", "headers_too_large"),
    (http_errors.UnsupportedTransferCoding, 501, "Not Implemented", "unsupported_transfer_coding"),
    (http_errors.ExpectationFailed, 417, "Expectation Failed", "expectation_failed"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden", "forbidden"),
    (http_errors.ConfigurationProblem, 500, "Internal Server Error", "internal_error"),
    (http_errors.ParseException, 400, "Bad Request", "bad_request"),
)

HTTP_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    415: "unsupported_media_type", 500: "internal_error",
}


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}
