"""What the feedback endpoints refuse, each with its status and code (rendered like every other error)."""

from __future__ import annotations

from service.errors import ClientError


class FeedbackOff(ClientError):
    status = 403
    code = "feedback_disabled"


class UnknownLabel(ClientError):
    status = 422
    code = "unknown_label"


class UnknownPrediction(ClientError):
    status = 404
    code = "unknown_prediction"


class FeedbackFull(ClientError):
    status = 507
    code = "feedback_full"


class FeedbackUnavailable(ClientError):
    status = 503
    code = "feedback_unavailable"
