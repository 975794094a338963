"""Client mistakes as exceptions with an HTTP status and a stable code, rendered as JSON in one place.

Each protocol has its own error body: the native API's ``{"error": {"code", "message"}}``, the standard
protocols' ``{"error": "<message>"}``. The handlers here pick the shape by the request's path prefix, so a
404 or 405 from routing, before any protocol code runs, is shaped like that protocol's other errors.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, jsonify, request
from gunicorn.http import errors as http_errors
from werkzeug.exceptions import ClientDisconnected, HTTPException

from service import metrics


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


class BufferFull(ConnectionError):
    """Raised by the worker's socket while a request is read: receiving more would take the worker past
    MAX_BUFFERED_BYTES (service/worker.py). An OSError, so Werkzeug reports it as a cut-off body."""


class UploadTooSlow(TimeoutError):
    """Raised by the worker's socket: a body has taken BODY_TIMEOUT_SECONDS and arrives slower than
    MIN_UPLOAD_RATE on average."""


# What gunicorn's own parser refuses, before the app runs, -> (status, reason, code); the worker answers these in
# the same JSON shapes (service/worker.py). Any other ParseException is a plain 400.
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


ErrorShape = Callable[[str, str], dict]  # (code, message) -> the JSON body


def register_error_handlers(app: Flask, shape_for: Callable[[str], ErrorShape] = lambda path: error_body) -> None:
    """Every error becomes JSON, in the shape ``shape_for(request.path)`` gives (by default the native one)."""

    def render(code: str, message: str, status: int, headers: dict[str, str] | None = None):
        return jsonify(shape_for(request.path)(code, message)), status, headers or {}

    @app.errorhandler(ClientError)
    def client_error(error: ClientError):
        return render(error.code, error.message, error.status, error.headers)

    @app.errorhandler(TimeoutError)
    def body_timeout(error: TimeoutError):
        # Raised by the socket when the client pauses longer than BODY_TIMEOUT_SECONDS, or sends slower than
        # MIN_UPLOAD_RATE (service/worker.py).
        metrics.series(metrics.CLIENT_TIMEOUTS, "body").inc()
        if isinstance(error, UploadTooSlow):
            return client_error(RequestTimeout(str(error)))
        seconds = app.extensions["settings"].body_timeout_seconds
        return client_error(RequestTimeout(f"the request body stopped arriving for {seconds:g} s "
                                           "(BODY_TIMEOUT_SECONDS)"))

    @app.errorhandler(BufferFull)
    def buffer_full(error: BufferFull):
        return client_error(ServiceBusy(str(error)))

    @app.errorhandler(ClientDisconnected)
    def body_cut_off(error: ClientDisconnected):
        # Werkzeug turns a failed body read into this 400; a read that timed out is the client's slowness, and a
        # read refused by the worker's budget is the worker's load.
        if isinstance(error.__context__, TimeoutError):
            return body_timeout(error.__context__)
        if isinstance(error.__context__, BufferFull):
            return buffer_full(error.__context__)
        return http_error(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        message = error.description or error.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"the upload is larger than the limit of {limit} bytes (MAX_UPLOAD_BYTES)"
        response, _, _ = render(HTTP_CODES.get(status, error.name.lower().replace(" ", "_")), message, status)
        if status == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        app.logger.exception("unhandled error")
        return render("internal_error", "the server failed to handle this request", 500)
