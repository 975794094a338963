"""Monitoring facts training and the service share, importable without NumPy: the gunicorn master reads the
settings that use them, and NumPy alone would add about 11 MB to its resident memory."""

# A top-1 probability below this is a low-confidence prediction: the reference records its share on training
# images, and the service counts live ones (LOW_CONFIDENCE_THRESHOLD) against the same default.
LOW_CONFIDENCE_THRESHOLD = 0.5
