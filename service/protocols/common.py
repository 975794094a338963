"""What the protocols' codecs share: reading a JSON request, the standard error shape, and where ids go when a
body has no room for them."""

from __future__ import annotations

import orjson

from service.errors import ClientError


class InvalidRequest(ClientError):
    """A request the protocol's own rules refuse (KServe V2, TF Serving)."""

    code = "invalid_request"


def json_object(body: bytes, expected: str = "a JSON object") -> dict:
    """The request's JSON object, or an InvalidRequest saying what was expected."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"the request must be {expected}")
    return document


def message_error_body(code: str, message: str) -> dict:
    """The error shape of KServe V2 and TF Serving alike: ``{"error": "<message>"}``."""
    return {"error": message}


# Where a protocol's body has no room for prediction ids (TF Serving), they go in this header, comma-separated.
PREDICTION_IDS_HEADER = "X-Prediction-Ids"
# ... and the version that answered (the current one, or its candidate as the canary) in this one.
MODEL_VERSION_HEADER = "X-Model-Version"
