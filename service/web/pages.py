"""What people and tools read: the web page at ``/``, the OpenAPI document and the interactive docs at ``/docs``.

All served from the package itself (the page from ``service/web/static``, Swagger UI's files from the
flask-swagger-ui wheel), never from a CDN: clusters are often air-gapped. Pages carry a Content-Security-Policy
that allows only the service's own scripts, styles and images, and no framing; every response says
``nosniff``.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, jsonify, request, send_file, send_from_directory

from service.errors import NotFound
from service.web.openapi import Example, openapi_document
from service.http.state import AppState

DOCS_URL = "/docs"
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Swagger UI's JavaScript and CSS, as the flask-swagger-ui wheel ships them.
SWAGGER_UI_DIR = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
# For HTML pages: the service's own scripts and styles only (no inline script, no eval), images from itself or
# data: URLs (the model's view of each upload), nothing else fetched, no framing.
PAGE_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                        "frame-ancestors 'none'")
# Swagger UI 5.x adds one <style> element of its own; its hash lets exactly that one in. The browser test fails
# (a CSP violation in the console) if a new Swagger UI changes it.
DOCS_SECURITY_POLICY = PAGE_SECURITY_POLICY.replace(
    "style-src 'self'", "style-src 'self' 'sha256-RL3ie0nH+Lzz2YNqQN83mnU0J1ot4QL7b99vMdIX99w='")
# The guides (docs/*.md) beside the package, in the repository and in the serving image alike.
GUIDES_DIR = Path(__file__).resolve().parents[2] / "docs"


def blueprint(state: AppState) -> Blueprint:
    pages = Blueprint("pages", __name__, static_folder=STATIC_DIR, static_url_path="/static")

    @pages.get("/")
    def index():
        return send_from_directory(STATIC_DIR, "index.html")

    @pages.get("/openapi.json")
    def openapi():
        """The document, its examples filled in from the default model as served now."""
        served = state.registry.snapshot()
        model = served.get(state.settings.default_model)
        example = Example() if model is None else Example(model.name, model.version, model.input_spec.shape,
                                                          tuple(sorted(served)))
        return jsonify(openapi_document(example))

    @pages.get("/guides/<name>")
    def guide(name: str):
        """One of the guides in ``docs/`` as Markdown text, so the page and /docs can link to them offline."""
        guides = sorted(p.name for p in GUIDES_DIR.glob("*.md")) if GUIDES_DIR.is_dir() else []
        if name not in guides:
            raise NotFound(f"no guide {name!r}; the guides are {', '.join(guides) or 'not installed here'}")
        return send_file(GUIDES_DIR / name, mimetype="text/markdown; charset=utf-8", max_age=300)

    @pages.get(DOCS_URL + "/")
    def docs():
        """Swagger UI, started by ``static/docs.js``."""
        return send_from_directory(STATIC_DIR, "docs.html")

    @pages.get(DOCS_URL + "/<path:path>")
    def docs_file(path: str):
        """Swagger UI's own files (JavaScript, CSS, icons)."""
        return send_from_directory(SWAGGER_UI_DIR, path, max_age=3600)

    pages.after_app_request(secure_headers)
    return pages


def secure_headers(response: Response) -> Response:
    """``nosniff`` on every response; on HTML pages also the content policy, no framing, no referrer."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.mimetype == "text/html":
        docs = request.path.startswith(DOCS_URL + "/")
        response.headers["Content-Security-Policy"] = DOCS_SECURITY_POLICY if docs else PAGE_SECURITY_POLICY
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
    return response
