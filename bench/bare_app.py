"""The baseline: a Flask app that only reads the upload and answers a constant JSON."""

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        received = sum(len(f.read()) for f in request.files.getlist("image"))
        return jsonify({"ok": True, "bytes": received})

    @app.get("/readyz")
    def readyz():
        return jsonify({"status": "ready"})

    return app
