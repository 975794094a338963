"""The API description against the code and the live server, and the endpoints the page relies on."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from openapi_spec_validator import validate
from PIL import Image

from service.app import create_app
from service.web.openapi import error_codes
from service.settings import Settings
from tests.conftest import ROOT, SHIPPED_MODELS, png_bytes

# Flask routes the document leaves out on purpose: the page's static files and Swagger UI's own assets.
UNDESCRIBED_RULES = {"/static/<path:filename>", "/docs/<path:path>"}
TF_VERBS = (":predict", ":classify")


@pytest.fixture(scope="module")
def app():
    return create_app(Settings(models_dir=SHIPPED_MODELS), watch=False)


@pytest.fixture(scope="module")
def document(shipped_server):
    return requests.get(shipped_server.url + "/openapi.json", timeout=10).json()


def described_operations(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def routed_operations(app) -> set[tuple[str, str]]:
    """Every (method, path) Flask routes, spelled as OpenAPI paths; TF Serving's ``<target>`` is
    ``<model>:predict`` or ``<model>:classify``."""
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in UNDESCRIBED_RULES:
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        paths = [path]
        if "{target}" in path:
            owner = "{version}" if "/versions/" in path else "{name}"
            paths = [path.replace("{target}", owner + verb) for verb in TF_VERBS]
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operations.update((method, p) for p in paths)
    return operations


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_route_is_described_and_every_described_path_is_routed(app, document):
    routed, described = routed_operations(app), described_operations(document)
    assert routed - described == set(), "routes missing from service/web/openapi.py"
    assert described - routed == set(), "described operations that no route serves"


def test_every_error_class_is_in_the_documented_error_codes():
    from service import errors

    for cls in (errors.MissingImage, errors.InvalidTensor, errors.ImageTooLarge, errors.RequestTimeout):
        assert cls.code in error_codes()
    assert "method_not_allowed" in error_codes()


def test_the_examples_name_the_model_being_served(document, shipped_server):
    served = requests.get(shipped_server.url + "/models", timeout=10).json()
    default = next(m for m in served["models"] if m["name"] == served["default_model"])
    parameters = document["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]["parameters"]
    assert {p["name"]: p["example"] for p in parameters} == {"name": default["name"],
                                                            "version": str(default["version"])}


def test_schemathesis_finds_nothing_against_the_live_server(shipped_server, tmp_path):
    """Bounded: 20 examples per operation, a fixed seed; every phase (examples, coverage, fuzzing, stateful)."""
    schemathesis = Path(sys.executable).parent / "st"
    command = [str(schemathesis), "run", shipped_server.url + "/openapi.json",
               "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                           "response_schema_conformance",
               "--max-examples", "20", "--seed", "1", "--workers", "1", "--generation-database", "none",
               "--request-timeout", "30", "--no-color"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert re.search(r"\d+ generated, \d+ passed", run.stdout)
    assert "27 passed" in run.stdout or "Tested: " in run.stdout


def test_docs_are_served_locally_without_a_cdn(shipped_server):
    page = requests.get(shipped_server.url + "/docs/", timeout=10)
    assert page.status_code == 200 and "swagger-ui" in page.text
    starter = requests.get(shipped_server.url + "/static/docs.js", timeout=10).text
    assert '"../openapi.json"' in starter
    assert not re.search(r"(src|href)=\"https?://", page.text), "Swagger UI must not load from a CDN"
    assets = re.findall(r"(?:src|href)=\"([^\"]+)\"", page.text)
    assert "swagger-ui-bundle.js" in assets and "../static/docs.js" in assets
    for asset in assets:
        response = requests.get(f"{shipped_server.url}/docs/{asset}", timeout=10)
        assert response.status_code == 200, asset


def test_the_page_and_its_assets_are_served_locally(shipped_server):
    page = requests.get(shipped_server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert not re.search(r"(src|href)=\"https?://", page.text)
    for asset in ("static/app.js", "static/style.css"):
        assert asset in page.text
        assert requests.get(f"{shipped_server.url}/{asset}", timeout=10).status_code == 200


def test_the_guides_are_served_and_nothing_else(shipped_server):
    for name in ("api.md", "operations.md", "training.md", "performance.md", "architecture.md", "feedback.md"):
        response = requests.get(f"{shipped_server.url}/guides/{name}", timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/markdown")
        assert response.text == (ROOT / "docs" / name).read_text()
    for name in ("README.md", "..%2FREADME.md", "..%2F..%2Fetc%2Fpasswd", "api"):
        assert requests.get(f"{shipped_server.url}/guides/{name}", timeout=10).status_code == 404


# --- the image as the model saw it ---------------------------------------------------------------------------

def seen_pixels(prediction: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["input"]["png_base64"]))))


def test_include_input_returns_exactly_the_pixels_of_a_dataset_sized_image(shipped_server, fashion):
    images = fashion.x_test[:3]
    files = [("image", (f"{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(images)]
    body = requests.post(shipped_server.url + "/predict?include=input", files=files, timeout=30).json()
    for prediction, original in zip(body["predictions"], images):
        assert prediction["input"]["width"] == 28 and prediction["input"]["mode"] == "L"
        np.testing.assert_array_equal(seen_pixels(prediction), original)


def test_include_input_shows_inversion_and_padding(shipped_server, fashion):
    """A dark garment on a light, wide canvas: the model sees it light on dark, fitted into 28x28."""
    garment = 255 - np.asarray(Image.fromarray(fashion.x_test[0]).resize((112, 112)))
    canvas = np.full((112, 224), 255, dtype=np.uint8)
    canvas[:, 56:168] = garment
    body = requests.post(shipped_server.url + "/predict?include=input&model=fashion_mnist",
                         files={"image": ("wide.png", png_bytes(canvas), "image/png")}, timeout=30).json()
    seen = seen_pixels(body["predictions"][0])  # the canvas scaled by 1/8 to 28x14, padded above and below
    assert seen.shape == (28, 28)
    assert seen[:7].max() < 40 and seen[-7:].max() < 40, "the padding is dark"
    assert seen[7:21, :7].max() < 40 and seen[7:21, -7:].max() < 40, "the light canvas is dark after inversion"
    assert seen[7:21, 7:21].mean() > 40, "the dark garment is light after inversion"


def test_include_rejects_unknown_options(shipped_server, fashion):
    response = requests.post(shipped_server.url + "/predict?include=weights",
                             files={"image": ("a.png", png_bytes(fashion.x_test[0]), "image/png")}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter"


# --- the model card's files and history ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_card_files_are_the_served_versions_own(shipped_server, name):
    version = requests.get(f"{shipped_server.url}/models/{name}", timeout=10).json()["version"]
    for filename in ("confusion_matrix.png", "learning_curves.png"):
        response = requests.get(f"{shipped_server.url}/models/{name}/files/{filename}", timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
        assert response.content == (SHIPPED_MODELS / name / str(version) / filename).read_bytes()


@pytest.mark.parametrize("filename", ["model.onnx", "metadata.json", "..%2Fhistory.jsonl", "nothing.png"])
def test_only_card_files_are_served(shipped_server, filename):
    response = requests.get(f"{shipped_server.url}/models/fashion_mnist/files/{filename}", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] in ("not_found",)


def test_history_lists_every_decision_newest_first(shipped_server):
    body = requests.get(shipped_server.url + "/models/cifar10/history", timeout=10).json()
    lines = (SHIPPED_MODELS / "cifar10" / "history.jsonl").read_text().splitlines()
    assert len(body["events"]) == len(lines) and body["events"][0]["version"] == body["current_version"]
    assert requests.get(shipped_server.url + "/models/nope/history", timeout=10).status_code == 404
