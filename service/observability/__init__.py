"""Observability: the Prometheus metrics, defined in one place, the model monitor (confidence, input statistics)
and the drift window the workers share; no Flask."""
