"""The HTTP plumbing every endpoint shares: the app state handed to blueprints, errors rendered as JSON, and the
operations endpoints (health, readiness, models, metrics)."""
