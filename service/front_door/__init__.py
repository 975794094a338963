"""The front door: gunicorn's configuration and the service's worker (timeouts by phase, fairness, balance,
bounded requests, drain)."""
