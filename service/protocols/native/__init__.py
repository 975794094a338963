"""The native protocol: ``POST /predict``."""
