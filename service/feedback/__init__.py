"""Feedback: production labels in (``POST /feedback``), their rules (labels, rate limit, retained inputs) and
stats out; the store itself is ``contract.feedback_store``."""
