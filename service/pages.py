"""What people and tools read: the web page at ``/``, the OpenAPI document and the interactive docs at ``/docs``.

All served from the package itself (the page from ``service/static``, Swagger UI from the flask-swagger-ui
wheel), never from a CDN: clusters are often air-gapped.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, current_app, jsonify, send_file
from flask_swagger_ui import get_swaggerui_blueprint

from service.errors import NotFound
from service.openapi import Example, openapi_document

pages = Blueprint("pages", __name__)
DOCS_URL = "/docs"
# The guides (docs/*.md) beside the package, in the repository and in the serving image alike.
GUIDES_DIR = Path(__file__).resolve().parents[1] / "docs"


@pages.get("/")
def index():
    return current_app.send_static_file("index.html")


@pages.get("/openapi.json")
def openapi():
    """The document, its examples filled in from the default model as served now."""
    settings = current_app.extensions["settings"]
    model = current_app.extensions["model_registry"].snapshot().get(settings.default_model)
    example = Example() if model is None else Example(model.name, model.version, model.input_spec.shape)
    return jsonify(openapi_document(example))


@pages.get("/guides/<name>")
def guide(name: str):
    """One of the guides in ``docs/`` as Markdown text, so the page and /docs can link to them offline."""
    guides = sorted(p.name for p in GUIDES_DIR.glob("*.md")) if GUIDES_DIR.is_dir() else []
    if name not in guides:
        raise NotFound(f"no guide {name!r}; the guides are {', '.join(guides) or 'not installed here'}")
    return send_file(GUIDES_DIR / name, mimetype="text/markdown; charset=utf-8", max_age=300)


def register_pages(app: Flask) -> None:
    app.register_blueprint(pages)
    app.register_blueprint(get_swaggerui_blueprint(DOCS_URL, "/openapi.json", config={
        "app_name": "image-classifier-service API", "deepLinking": True, "tryItOutEnabled": True}))
