"""HTTP service for published image classifiers: Flask on gunicorn, ONNX Runtime for inference."""
