"""Every error the app answers becomes JSON, in the shape of the protocol whose path the request has.

The native API answers ``{"error": {"code", "message"}}``, the standard protocols ``{"error": "<message>"}``;
the shape is picked by the request's path prefix, so a 404 or 405 from routing, before any protocol code runs,
is shaped like that protocol's other errors.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from service.errors import (
    HTTP_CODES,
    BufferFull,
    ClientError,
    RequestTimeout,
    ServiceBusy,
    UploadTooSlow,
    error_body,
)
from service.observability import metrics
from service.settings import Settings

ErrorShape = Callable[[str, str], dict]  # (code, message) -> the JSON body


def register_error_handlers(app: Flask, settings: Settings,
                            shape_for: Callable[[str], ErrorShape] = lambda path: error_body) -> None:
    """Every error becomes JSON, in the shape ``shape_for(request.path)`` gives (by default the native one)."""

    def render(code: str, message: str, status: int, headers: dict[str, str] | None = None):
        return jsonify(shape_for(request.path)(code, message)), status, headers or {}

    @app.errorhandler(ClientError)
    def client_error(error: ClientError):
        return render(error.code, error.message, error.status, error.headers)

    @app.errorhandler(TimeoutError)
    def body_timeout(error: TimeoutError):
        # Raised by the socket when the client pauses longer than BODY_TIMEOUT_SECONDS, or sends slower than
        # MIN_UPLOAD_RATE (service/front_door/worker.py).
        metrics.series(metrics.CLIENT_TIMEOUTS, "body").inc()
        if isinstance(error, UploadTooSlow):
            return client_error(RequestTimeout(str(error)))
        seconds = settings.body_timeout_seconds
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
            limit = settings.max_upload_bytes
            message = f"the upload is larger than the limit of {limit} bytes (MAX_UPLOAD_BYTES)"
        response, _, _ = render(HTTP_CODES.get(status, error.name.lower().replace(" ", "_")), message, status)
        if status == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        app.logger.exception("unhandled error")
        return render("internal_error", "the server failed to handle this request", 500)
