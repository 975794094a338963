"""What the protocols' codecs share: the standard error shape, and where ids go when a body has no room."""

from __future__ import annotations


def message_error_body(code: str, message: str) -> dict:
    """The error shape of KServe V2 and TF Serving alike: ``{"error": "<message>"}``."""
    return {"error": message}


# Where a protocol's body has no room for prediction ids (TF Serving), they go in this header, comma-separated.
PREDICTION_IDS_HEADER = "X-Prediction-Ids"
