"""Client mistakes as exceptions with an HTTP status and a stable code, rendered as JSON in one place.

Each protocol has its own error body: the native API's ``{"error": {"code", "message"}}``, the standard
protocols' ``{"error": "<message>"}``. The handlers here pick the shape by the request's path prefix, so a
404 or 405 from routing, before any protocol code runs, is shaped like that protocol's other errors.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, jsonify, request

from service import metrics
from werkzeug.exceptions import ClientDisconnected, HTTPException


class ClientError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


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


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class NotReady(ClientError):
    status = 503
    code = "not_ready"


HTTP_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    415: "unsupported_media_type", 500: "internal_error",
}


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


ErrorShape = Callable[[str, str], dict]  # (code, message) -> the JSON body


def register_error_handlers(app: Flask, shape_for: Callable[[str], ErrorShape] = lambda path: error_body) -> None:
    """Every error becomes JSON, in the shape ``shape_for(request.path)`` gives (by default the native one)."""

    def render(code: str, message: str, status: int):
        return jsonify(shape_for(request.path)(code, message)), status

    @app.errorhandler(ClientError)
    def client_error(error: ClientError):
        return render(error.code, error.message, error.status)

    @app.errorhandler(TimeoutError)
    def body_timeout(error: TimeoutError):
        # Raised by the socket when the client pauses longer than BODY_TIMEOUT_SECONDS (service/worker.py).
        metrics.series(metrics.CLIENT_TIMEOUTS, "body").inc()
        seconds = app.extensions["settings"].body_timeout_seconds
        return client_error(RequestTimeout(f"the request body stopped arriving for {seconds:g} s "
                                           "(BODY_TIMEOUT_SECONDS)"))

    @app.errorhandler(ClientDisconnected)
    def body_cut_off(error: ClientDisconnected):
        # Werkzeug turns a failed body read into this 400; a read that timed out is the client's slowness.
        if isinstance(error.__context__, TimeoutError):
            return body_timeout(error.__context__)
        return http_error(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        message = error.description or error.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"the upload is larger than the limit of {limit} bytes (MAX_UPLOAD_BYTES)"
        response, _ = render(HTTP_CODES.get(status, error.name.lower().replace(" ", "_")), message, status)
        if status == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        app.logger.exception("unhandled error")
        return render("internal_error", "the server failed to handle this request", 500)
