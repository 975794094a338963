"""The API description against the code and the live server, and the endpoints the page relies on."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import requests
from openapi_spec_validator import validate
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.app import OPEN_BLUEPRINTS, OPEN_ENDPOINTS, create_app
from service.web.openapi import error_codes
from service.settings import Settings
from tests.conftest import API_KEYS_SECRET, ROOT, SHIPPED_MODELS, GunicornServer, png_bytes, write_api_keys

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


def run_schemathesis(url: str, folder: Path, *options: str) -> None:
    """Bounded: 20 examples per operation, a fixed seed; every phase (examples, coverage, fuzzing, stateful)."""
    schemathesis = Path(sys.executable).parent / "st"
    command = [str(schemathesis), "run", url + "/openapi.json",
               "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                           "response_schema_conformance",
               "--max-examples", "20", "--seed", "1", "--workers", "1", "--generation-database", "none",
               "--request-timeout", "30", "--no-color", *options]
    run = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert re.search(r"\d+ generated, \d+ passed", run.stdout)
    assert "27 passed" in run.stdout or "Tested: " in run.stdout


def test_schemathesis_finds_nothing_against_the_live_server(shipped_server, tmp_path):
    run_schemathesis(shipped_server.url, tmp_path)


# --- API keys ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """A server with API keys on; yields it and each key's name -> key."""
    keys_file = tmp_path_factory.mktemp("openapi-keys") / "keys.json"
    keys = write_api_keys(keys_file, alice={}, narrow={"models": ("cifar10",)})
    server = GunicornServer(SHIPPED_MODELS, API_KEYS_FILE=str(keys_file), API_KEYS_SECRET=API_KEYS_SECRET).start()
    yield server, keys
    server.stop()


def needs_key(op: dict) -> bool:
    return any("apiKey" in requirement for requirement in op.get("security", []))


def test_the_documented_security_is_the_routes_own(app, document):
    """An operation documents an API key exactly when its route is behind the keys, optional (``{}``) so that it
    is true with keys off too, and the refusals in its protocol's error shape."""
    schemes = document["components"]["securitySchemes"]
    assert (schemes["apiKey"]["type"], schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == (
        "apiKey", "header", "X-API-Key")
    assert schemes["apiKeyBearer"]["type"] == "http" and schemes["apiKeyBearer"]["scheme"] == "bearer"
    adapter = app.url_map.bind("localhost")
    for method, path in described_operations(document):
        op = document["paths"][path][method.lower()]
        endpoint, _ = adapter.match(re.sub(r"\{[a-z_]+\}", "x", path), method=method)
        keyless = endpoint in OPEN_ENDPOINTS or endpoint.split(".")[0] in OPEN_BLUEPRINTS
        assert needs_key(op) is not keyless, (method, path, endpoint)
        if keyless:
            continue
        assert {} in op["security"] and {"apiKeyBearer": []} in op["security"]
        shape = "MessageError" if path.startswith(("/v1/", "/v2")) else "Error"
        for status in ("401", "403", "429"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{shape}"}, (method, path, status)
    for code in ("unauthorized", "forbidden", "rate_limited", "request_too_large"):
        assert code in error_codes()


def documented_request(document: dict, method: str, path: str) -> str:
    """The operation's path with its parameters' examples filled in (a served model, its version...)."""
    parameters = document["paths"][path][method.lower()].get("parameters", [])
    examples = {p["name"]: str(p.get("example", "x")) for p in parameters if p["in"] == "path"}
    return re.sub(r"\{([a-z_]+)\}", lambda match: examples[match.group(1)], path)


def test_each_operation_documented_as_needing_a_key_needs_one_and_no_other_does(keyed_server):
    """Against a server with keys on: each keyed operation answers 401 without a key and 403 with a wrong one (or
    one for other models), in the error shape its document names, and neither with the key in either header; the
    keyless ones answer without."""
    server, keys = keyed_server
    document = requests.get(server.url + "/openapi.json", timeout=10).json()
    wrong = "ick_000000000000_" + "A" * 43
    checked = 0
    for method, path in sorted(described_operations(document)):
        op = document["paths"][path][method.lower()]
        url = server.url + documented_request(document, method, path)

        def send(**headers):
            return requests.request(method, url, headers=headers, timeout=30)

        if not needs_key(op):
            answer = send()
            assert answer.status_code != 401 and "WWW-Authenticate" not in answer.headers, (method, path)
            continue
        checked += 1
        refusals = [({}, 401), ({"X-API-Key": wrong}, 403), ({"Authorization": f"Bearer {wrong}"}, 403)]
        if "{name}" in path:  # the examples name fashion_mnist, which the narrow key may not call
            refusals.append(({"X-API-Key": keys["narrow"]}, 403))
        for headers, status in refusals:
            answer = send(**headers)
            assert answer.status_code == status, (method, path, headers, answer.text)
            schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
            jsonschema.validate(answer.json(), {**schema, "components": document["components"]})
            if status == 401:
                assert answer.headers["WWW-Authenticate"] == 'Bearer realm="image-classifier"'
        for headers in ({"X-API-Key": keys["alice"]}, {"Authorization": f"Bearer {keys['alice']}"}):
            answer = send(**headers)
            assert answer.status_code not in (401, 403), (method, path, headers, answer.text)
    assert checked >= 20


def api_key_counters(url: str) -> dict[tuple[str, str], float]:
    """(sample name, key and reason) -> value of the API key counters the server exposes."""
    counters = {}
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name.startswith("classifier_api_key_") and sample.name.endswith("_total"):
                counters[sample.name, sample.labels["key"] + ":" + sample.labels.get("reason", "")] = sample.value
    return counters


def test_schemathesis_finds_nothing_against_a_server_with_api_keys(keyed_server, tmp_path):
    """The same run with keys on and a key passed: every request it sends carries the key and is let in."""
    server, keys = keyed_server
    before = api_key_counters(server.url)
    run_schemathesis(server.url, tmp_path, "-H", f"X-API-Key: {keys['alice']}")
    after = api_key_counters(server.url)
    admitted = after[("classifier_api_key_requests_total", "alice:")] - before.get(
        ("classifier_api_key_requests_total", "alice:"), 0)
    assert admitted > 500
    for reason in ("missing", "invalid"):
        sample = ("classifier_api_key_refusals_total", f":{reason}")
        assert after.get(sample, 0) == before.get(sample, 0), f"schemathesis sent a request {reason} a key"


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
