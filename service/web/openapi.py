"""The OpenAPI 3.1 description of every endpoint, served at ``/openapi.json`` and rendered at ``/docs``.

Written beside the code rather than inferred from it, and kept from drifting by the tests: every Flask route
must appear here with its methods and every path here must be a route (``tests/service/test_openapi.py``), the
document must validate, and schemathesis checks the live server's answers against it (status codes, content
types, response schemas). Error codes are read from ``service.errors``, so a new error class shows up here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from contract import conformal
from service import errors
from service.protocols import kserve_v2, tf_serving

JSON = "application/json"
NATIVE, V2, TF, OPS = "native", "KServe V2", "TensorFlow Serving", "operations"


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(description: str, schema: dict) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error_codes() -> list[str]:
    """Every ``code`` a native error body can carry: the client errors' own and the ones routing produces."""
    codes = set(errors.HTTP_CODES.values()) | {code for *_, code in errors.PARSE_ERRORS}
    pending = [errors.ClientError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


# Which statuses an operation may answer besides 200, by kind of operation.
LOOKUP_ERRORS = (404,)
UPLOAD_ERRORS = (400, 404, 408, 413, 415, 422, 503)
TENSOR_ERRORS = (400, 404, 408, 413, 422, 503)
ERROR_MEANINGS = {
    400: "The request is malformed: see the message.",
    404: "No such model, version or URL.",
    408: "The request's headers or body arrived too slowly (HEADER_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS).",
    413: "The body is larger than MAX_UPLOAD_BYTES, or holds more images than the API key may send in a minute.",
    415: "Not multipart or an image, or an image format that is not supported.",
    422: "The image has more pixels than MAX_IMAGE_PIXELS.",
    503: "Models are still loading.",
}


def error_responses(statuses: tuple[int, ...], schema: str) -> dict:
    return {str(status): json_response(ERROR_MEANINGS[status], ref(schema)) for status in statuses}


# API keys are off unless the server sets API_KEYS_FILE or API_KEYS_DATABASE; then every operation but health,
# metrics, the pages and feedback's token-guarded ones needs one (service/app.py's OPEN_ENDPOINTS; the tests
# hold the two together). The empty requirement keeps the document true with keys off.
API_KEY_SECURITY = [{"apiKey": []}, {"apiKeyBearer": []}, {}]
KEY_ERROR_MEANINGS = {
    401: "No API key, and this server needs one: send `X-API-Key: <key>` or `Authorization: Bearer <key>`.",
    403: "The API key is not valid here (mistyped, revoked or never issued), or it may not call this model.",
    429: "The API key is past its requests-per-second or images-per-minute quota; retry after `Retry-After` "
         "seconds.",
    503: "The API keys' database (API_KEYS_DATABASE) has not answered yet; retry after `Retry-After` seconds.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds until the request would pass.", "schema": {"type": "integer"}}}
KEY_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "`Bearer realm=\"image-classifier\"`.", "schema": {"type": "string"}}},
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}


def keyed(op: dict) -> dict:
    """The operation as it stands with API keys on: a key required, and the refusals in its protocol's error
    shape."""
    schema = "MessageError" if op["tags"][0] in (V2, TF) else "Error"
    responses = dict(op["responses"])
    for status, meaning in KEY_ERROR_MEANINGS.items():
        if str(status) in responses:  # an operation's own 503 (loading, busy) stays as it is described
            continue
        responses[str(status)] = json_response(meaning, ref(schema))
        if status in KEY_ERROR_HEADERS:
            responses[str(status)]["headers"] = KEY_ERROR_HEADERS[status]
    responses = dict(sorted(responses.items()))
    return {**op, "responses": responses, "security": API_KEY_SECURITY}


def require_keys(paths: dict, keyless: set[str]) -> dict:
    """``paths`` with every operation outside ``keyless`` needing an API key."""
    return {path: item if path in keyless else {method: keyed(op) for method, op in item.items()}
            for path, item in paths.items()}


# Reachable without an API key whatever the server's settings (probes, scrapers, people and their browsers).
KEYLESS_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/docs/", "/guides/{name}",
                 "/v2/health/live", "/v2/health/ready",
                 # Behind FEEDBACK_TOKEN instead.
                 "/feedback", "/feedback/{name}/{image_id}", "/feedback/queue"}


def operation(tag: str, summary: str, responses: dict, *, parameters: list | None = None,
              body: dict | None = None, description: str | None = None) -> dict:
    op = {"tags": [tag], "summary": summary, "responses": responses}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    return op


def path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


@dataclass(frozen=True)
class Example:
    """A served model to fill the document's examples with, so that a reader (and schemathesis) starts from a
    request that works."""

    name: str = "fashion_mnist"
    version: int = 1
    shape: tuple[int, ...] = (28, 28)
    served: tuple[str, ...] = ("cifar10", "fashion_mnist", "mnist")  # every model's name, for the examples

    @property
    def served_text(self) -> str:
        names = [f"`{name}`" for name in self.served]
        return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)

    def pixels(self) -> list:
        """An all-black image of the model's input shape, as nested lists."""
        return np.zeros(self.shape, dtype=np.float32).tolist()


def model_params(example: Example, versioned: bool = False) -> list[dict]:
    params = [{**path_param("name", f"A served model: {example.served_text}."),
               "example": example.name,
               "examples": {name: {"value": name} for name in example.served}}]
    if versioned:
        params.append({**path_param("version", "The served version's number; any other version answers 404."),
                       "example": str(example.version)})
    return params


COVERAGE_SCHEMA = {"type": "number", "minimum": 0.5, "maximum": 0.99, "multipleOf": 0.01}
GUARANTEE_SCHEMA = {"type": "string", "enum": list(conformal.GUARANTEES)}
ABSTAIN_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 10}
SET_PARAMETERS = [
    {"name": "coverage", "in": "query", "description": "Adds `prediction_set`: the labels that hold the true one "
     "with at least this probability (0.50 to 0.99, in steps of 0.01), by split conformal prediction fitted at "
     "publish time. See [the API guide](/guides/api.md#prediction-sets).", "schema": COVERAGE_SCHEMA,
     "example": 0.9},
    {"name": "guarantee", "in": "query", "description": "`per_class` (default): the coverage holds for each true "
     "class; `marginal`: on average over images (smaller sets).", "schema": GUARANTEE_SCHEMA},
    {"name": "abstain_above", "in": "query", "description": "With `coverage`: the set says `\"unsure\": true` when "
     "it holds more labels than this.", "schema": ABSTAIN_SCHEMA},
]


def native_paths(example: Example) -> dict:
    model = model_params(example)[0]
    predict_parameters = [
        {"name": "model", "in": "query", "description": f"Which model answers: {example.served_text} (default "
         "`DEFAULT_MODEL`).", "schema": {"type": "string"}, "example": example.name,
         "examples": {name: {"value": name} for name in example.served}},
        {"name": "top_k", "in": "query", "description": "How many classes to list in `top` (default "
         "`DEFAULT_TOP_K`), from 1 to the model's number of classes.", "schema": {"type": "integer", "minimum": 1}},
        {"name": "include", "in": "query", "description": "`input` adds each image as the model saw it after "
         "normalization: a PNG of the 28x28 or 32x32 pixels.", "schema": {"type": "string", "enum": ["input"]}},
        *SET_PARAMETERS,
    ]
    image_file = {"type": "string", "contentMediaType": "application/octet-stream"}
    upload = {"required": True, "description": "The image as multipart field `image` (repeat the field for "
              "several images) or as the raw body. PNG, JPEG, GIF, BMP, WebP or TIFF.",
              "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["image"],
                  "properties": {"image": {"type": "array", "items": image_file, "minItems": 1}}}},
                  "image/png": {"schema": image_file}, "image/jpeg": {"schema": image_file},
                  "application/octet-stream": {"schema": image_file}}}
    return {
        "/predict": {"post": operation(
            NATIVE, "Classify one or several uploaded images",
            {"200": json_response("One prediction per image, in upload order.", ref("Prediction")),
             **error_responses(UPLOAD_ERRORS, "Error")},
            parameters=predict_parameters, body=upload,
            description="Each image is decoded, oriented, converted to the model's color mode, inverted if it "
                        "shows a light background (Fashion-MNIST, MNIST), fitted and padded to the input size and "
                        "scaled to [0, 1]; see `/models/{name}` → `preprocessing`.")},
        "/healthz": {"get": operation(OPS, "Liveness: 200 while the process runs",
                                      {"200": json_response("Alive.", ref("Health"))})},
        "/readyz": {"get": operation(OPS, "Readiness: 200 once models are loaded, 503 before and while draining",
                                     {"200": json_response("Ready to serve.", ref("Readiness")),
                                      "503": json_response("Loading or draining.", ref("Readiness"))})},
        "/models": {"get": operation(NATIVE, "Every served model, in brief",
                                     {"200": json_response("The served models.", ref("ModelList")),
                                      **error_responses((503,), "Error")})},
        "/models/{name}": {"get": operation(
            NATIVE, "One model in full: classes, input, preprocessing, test metrics, training",
            {"200": json_response("The model's card as data.", ref("ModelDetail")),
             **error_responses(LOOKUP_ERRORS, "Error")}, parameters=[model])},
        "/models/{name}/history": {"get": operation(
            NATIVE, "The model's promotions, refusals and rollbacks, newest first",
            {"200": json_response("The version history.", ref("History")),
             **error_responses(LOOKUP_ERRORS, "Error")}, parameters=[model])},
        "/models/{name}/files/{filename}": {"get": operation(
            NATIVE, "A file of the served version's model card",
            {"200": {"description": "The file.", "content": {
                "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
                "text/markdown": {"schema": {"type": "string"}}}},
             **error_responses(LOOKUP_ERRORS, "Error")},
            parameters=[model, {**path_param("filename", "`confusion_matrix.png`, `learning_curves.png` or "
                                                         "`MODEL_CARD.md`."), "example": "confusion_matrix.png"}])},
        "/metrics": {"get": operation(OPS, "Prometheus metrics, text exposition format", {"200": {
            "description": "The metrics of every worker.",
            "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/openapi.json": {"get": operation(OPS, "This document", {"200": json_response(
            "The OpenAPI 3.1 description.", {"type": "object"})})},
        "/": {"get": operation(OPS, "The web page: classify dropped images, see the model card", {"200": {
            "description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}})},
        "/docs/": {"get": operation(OPS, "Interactive API docs (Swagger UI, served locally)", {"200": {
            "description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}})},
        "/guides/{name}": {"get": operation(OPS, "A guide from docs/, as Markdown", {
            "200": {"description": "The guide.", "content": {"text/markdown": {"schema": {"type": "string"}}}},
            **error_responses(LOOKUP_ERRORS, "Error")},
            parameters=[{**path_param("name", "`api.md`, `operations.md`, `training.md`, `performance.md` or "
                                              "`architecture.md`, `feedback.md`."), "example": "api.md"}])},
    }


FEEDBACK_MEANINGS = {
    **ERROR_MEANINGS,
    401: "No bearer token: send `Authorization: Bearer <FEEDBACK_TOKEN>`.",
    403: "A wrong token, or feedback is off (no FEEDBACK_TOKEN on the server): see `code`.",
    404: "No such model, or no retained prediction with this id.",
    422: "The label is not one of the model's classes, or the image has more pixels than MAX_IMAGE_PIXELS.",
    429: "More than FEEDBACK_RATE_PER_MINUTE requests a minute to this worker; see `Retry-After`.",
    503: "Models are still loading, or the feedback database is unavailable.",
    507: "The model already has FEEDBACK_MAX_ITEMS feedback items.",
}
BEARER = [{"feedbackToken": []}]


def feedback_errors(statuses: tuple[int, ...]) -> dict:
    return {str(status): json_response(FEEDBACK_MEANINGS[status], ref("Error")) for status in statuses}


def feedback_paths(example: Example) -> dict:
    image_file = {"type": "string", "contentMediaType": "application/octet-stream"}
    text = {"type": "string", "maxLength": 1024}
    fields = {"label": {**text, "description": "The true class: a name from `/models/{name}` → `classes` "
                                               "(any case) or its index."},
              "model": {**text, "description": "Which model the label is for (default `DEFAULT_MODEL`)."},
              "id": {**text, "description": "The `id` of a recent prediction, instead of the image "
                                            "(needs RETAIN_PREDICTIONS)."}}
    body = {"required": True, "description": "The true label with either the image (as for `/predict`, one "
            "image) or the id of a retained prediction. Fields may also be query arguments.",
            "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["label"], "properties": {
                "image": image_file, **fields}}},
                JSON: {"schema": {"type": "object", "required": ["id", "label"], "properties": fields},
                       "example": {"id": "0" * 64, "label": "Ankle boot", "model": example.name}},
                "image/png": {"schema": image_file}, "image/jpeg": {"schema": image_file}}}
    query = [{"name": key, "in": "query", "description": schema["description"], "schema": {"type": "string"}}
             for key, schema in fields.items()]
    return {
        "/feedback": {"post": {**operation(
            NATIVE, "Store the true label of an image, for the next retrain (needs the token)",
            {"201": json_response("Stored.", ref("FeedbackStored")),
             "200": json_response("Already stored with this label: kept once.", ref("FeedbackStored")),
             **feedback_errors((400, 401, 403, 404, 408, 413, 415, 422, 429, 503, 507))},
            parameters=query, body=body,
            description="The image is normalized exactly as `/predict` does, so its `id` equals the prediction's "
                        "`id`. See [the feedback guide](/guides/feedback.md)."), "security": BEARER}},
        "/feedback/{name}/{image_id}": {"delete": {**operation(
            NATIVE, "Forget an image's feedback and its stored picture (needs the token)",
            {"200": json_response("Deleted.", {"type": "object", "required": ["model", "id", "deleted"],
                                                "properties": {"model": {"type": "string"}, "id": {"type": "string"},
                                                               "deleted": {"type": "integer"}}}),
             **feedback_errors((401, 403, 404, 503))},
            parameters=[{**path_param("name", "The model."), "example": example.name},
                        {**path_param("image_id", "The image's id: 64 hexadecimal digits."), "example": "0" * 64}]),
            "security": BEARER}},
        "/feedback/queue": {"get": {**operation(
            NATIVE, "The labeling queue: retained inputs a label would help most, unsure first (needs the token)",
            {"200": json_response("In the order to label them.", ref("LabelingQueue")),
             **feedback_errors((400, 401, 403, 404, 503))},
            parameters=[{"name": "model", "in": "query", "description": "Which model (default `DEFAULT_MODEL`).",
                         "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "description": "How many (default 20, at most 100).",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 100}}],
            description="Needs `RETAIN_PREDICTIONS=1`. Unsure first (a 90% per-class set of more than one label), "
                        "then the most unlike the training data, then the newest; labeled ones leave the queue."),
            "security": BEARER}},
        "/feedback/stats": {"get": operation(
            NATIVE, "Production accuracy: feedback counts per true label and agreement with the served model",
            {"200": json_response("Per model.", ref("FeedbackStats")), **feedback_errors((404, 503))},
            parameters=[{"name": "model", "in": "query", "description": "Only this model.",
                         "schema": {"type": "string"}}])},
    }


def both_versions(prefix: str, suffix: str, op: dict, example: Example, method: str = "get") -> dict:
    """The path without a version (the served one) and with ``/versions/{version}``."""
    return {f"{prefix}/{{name}}{suffix}": {method: {**op, "parameters": model_params(example)}},
            f"{prefix}/{{name}}/versions/{{version}}{suffix}": {
                method: {**op, "parameters": model_params(example, versioned=True)}}}


def kserve_v2_paths(example: Example) -> dict:
    def both(suffix: str, op: dict, method: str = "get") -> dict:
        return both_versions("/v2/models", suffix, op, example, method)

    infer_body = {"required": True, "description": "JSON, or with the binary tensor data extension a JSON header "
                  "(its length in the `Inference-Header-Content-Length` header) followed by the tensors' bytes.",
                  "content": {JSON: {"schema": ref("V2InferRequest"), "example": {"inputs": [{
                      "name": kserve_v2.PIXELS_INPUT, "datatype": "FP32", "shape": [1, *example.shape],
                      "data": example.pixels()}]}},
                              "application/octet-stream": {"schema": {"type": "string",
                                                                      "contentMediaType": "application/octet-stream"}}}}
    infer_ok = {"description": "The probabilities, or the top classes with the classification extension.",
                "content": {JSON: {"schema": ref("V2InferResponse")},
                            "application/octet-stream": {"schema": {"type": "string"}}}}
    return {
        "/v2": {"get": operation(V2, "Server metadata", {"200": json_response("Name, version, extensions.",
                                                                               ref("V2ServerMetadata"))})},
        "/v2/health/live": {"get": operation(V2, "Server liveness", {"200": json_response(
            "Alive.", {"type": "object", "properties": {"live": {"type": "boolean"}}})})},
        "/v2/health/ready": {"get": operation(V2, "Server readiness (400 when not ready, as the protocol says)", {
            "200": json_response("Ready.", ref("V2Ready")), "400": json_response("Not ready.", ref("V2Ready"))})},
        **both("", operation(V2, "Model metadata: inputs and outputs",
                             {"200": json_response("The model's tensors.", ref("V2ModelMetadata")),
                              **error_responses(LOOKUP_ERRORS, "MessageError")})),
        **both("/ready", operation(V2, "Model readiness", {
            "200": json_response("Loaded.", {"type": "object", "required": ["name", "ready"],
                                             "properties": {"name": {"type": "string"},
                                                            "ready": {"type": "boolean"}}}),
            **error_responses(LOOKUP_ERRORS, "MessageError")})),
        **both("/infer", operation(V2, "Inference: FP32 `pixels` or BYTES `image` in, `probabilities` out",
                                   {"200": infer_ok, **error_responses(TENSOR_ERRORS, "MessageError")},
                                   body=infer_body), method="post"),
    }


def tf_serving_paths(example: Example) -> dict:
    def both(suffix: str, op: dict, method: str = "get") -> dict:
        return both_versions("/v1/models", suffix, op, example, method)

    def call(schema: str, result: str, summary: str, items: str) -> dict:
        return operation(TF, summary, {"200": json_response("One result per instance.", ref(result)),
                                       **error_responses(TENSOR_ERRORS, "MessageError")},
                         body={"required": True, "content": {JSON: {"schema": ref(schema),
                                                                    "example": {items: [example.pixels()]}}}})

    return {
        **both("", operation(TF, "Model status", {"200": json_response("The served version.", ref("TFStatus")),
                                                  **error_responses(LOOKUP_ERRORS, "MessageError")})),
        **both("/metadata", operation(TF, "Model metadata: the signature", {
            "200": json_response("The serving_default signature.", {"type": "object"}),
            **error_responses(LOOKUP_ERRORS, "MessageError")})),
        **both(":predict", call("TFPredictRequest", "TFPredictResponse",
                                "Predict, row (`instances`) or columnar (`inputs`) format", "instances"),
               method="post"),
        **both(":classify", call("TFClassifyRequest", "TFClassifyResponse",
                                 "Classify: every class as [label, score], highest first", "examples"),
               method="post"),
    }


def schemas() -> dict:
    number_list = {"type": "array", "items": {"type": "number"}}
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "parameters": {"type": "object"}, "data": {"type": "array"}}}
    b64 = {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string",
                                                                         "contentEncoding": "base64"}}}
    instance = {"oneOf": [b64, {"type": "array"}, {"type": "object"}]}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string", "enum": error_codes()}, "message": {"type": "string"}}}}},
        "MessageError": {"type": "object", "required": ["error"], "description": "The standard protocols' error.",
                         "properties": {"error": {"type": "string"}}},
        "Prediction": {"type": "object", "required": ["model", "version", "predictions"], "properties": {
            "model": {"type": "string"}, "version": {"type": "integer", "description": (
                "The version that answered: the current one, or its candidate on trial for a CANARY_PERCENT "
                "share of inputs")},
            "predictions": {"type": "array", "items": {"type": "object", "required": ["top", "probabilities"],
                                                       "properties": {
                "top": {"type": "array", "items": {"type": "object", "required": ["label", "index", "probability"],
                                                   "properties": {"label": {"type": "string"},
                                                                  "index": {"type": "integer"},
                                                                  "probability": {"type": "number"}}}},
                "probabilities": {**number_list, "description": "The softmax over every class, in index order."},
                "prediction_set": {"type": "object", "description": "With `coverage`: the set of labels.",
                                   "required": ["coverage", "guarantee", "labels", "indices"], "properties": {
                    "coverage": {"type": "number"}, "guarantee": GUARANTEE_SCHEMA,
                    "labels": {"type": "array", "items": {"type": "string"},
                               "description": "Most probable first; may be empty at a coverage below the "
                                              "model's accuracy."},
                    "indices": {"type": "array", "items": {"type": "integer"}},
                    "unsure": {"type": "boolean", "description": "With `abstain_above`: the set is larger."}}},
                "out_of_distribution": {"type": "object", "description": "How unlike the training data the "
                                        "input is (versions published with a reference).",
                                        "required": ["score", "p_value"], "properties": {
                    "score": {"type": "number"},
                    "p_value": {"type": "number", "description": "The share of held-out training-distribution "
                                                                 "images at least this unusual."}}},
                "input": {"type": "object", "description": "With `include=input`: the image as the model saw it.",
                          "required": ["width", "height", "mode", "png_base64"], "properties": {
                              "width": {"type": "integer"}, "height": {"type": "integer"},
                              "mode": {"type": "string", "enum": ["L", "RGB"]},
                              "png_base64": {"type": "string", "contentEncoding": "base64",
                                             "contentMediaType": "image/png"}}}}}}}},
        "FeedbackStored": {"type": "object", "required": ["id", "model", "label", "stored"], "properties": {
            "id": {"type": "string"}, "model": {"type": "string"}, "model_version": {"type": "integer"},
            "predicted_label": {"type": "string"}, "label": {"type": "string"}, "index": {"type": "integer"},
            "stored": {"type": "boolean", "description": "false when this image already had this label."}}},
        "LabelingQueue": {"type": "object", "required": ["model", "items"], "properties": {
            "model": {"type": "string"}, "coverage": {"type": "number"}, "guarantee": {"type": "string"},
            "items": {"type": "array", "items": {"type": "object", "required": ["id", "input"], "properties": {
                "id": {"type": "string"}, "model_version": {"type": "integer"},
                "predicted_label": {"type": "string"},
                "prediction_set": {"type": ["array", "null"], "items": {"type": "string"}},
                "unsure": {"type": ["boolean", "null"]}, "ood_score": {"type": ["number", "null"]},
                "ood_p_value": {"type": ["number", "null"]}, "retained_at": {"type": "number"},
                "input": {"type": "object"}}}}}},
        "FeedbackStats": {"type": "object", "required": ["enabled", "models"], "properties": {
            "enabled": {"type": "boolean"}, "retained": {"type": ["object", "null"]},
            "models": {"type": "array", "items": {"type": "object", "required": ["model", "items"], "properties": {
                "model": {"type": "string"}, "items": {"type": "integer"},
                "per_label": {"type": "object", "additionalProperties": {
                    "type": "object", "properties": {"items": {"type": "integer"}, "agreement": {"type": "number"}}}},
                "agreement": {"type": ["number", "null"],
                              "description": "The share of items whose served prediction was the true label."}}}}}},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Readiness": {"type": "object", "required": ["status", "models"], "properties": {
            "status": {"type": "string", "enum": ["ready", "not_ready", "draining"]},
            "models": {"type": "object", "additionalProperties": {"type": "integer"}},
            "refused": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "ModelSummary": {"type": "object", "required": ["name", "version", "classes", "input", "preprocessing",
                                                        "metrics"], "properties": {
            "name": {"type": "string"}, "version": {"type": "integer"}, "runtime": {"type": "string"},
            "classes": {"type": "array", "items": {"type": "string"}}, "input": {"type": "object"},
            "preprocessing": {"type": "object"}, "metrics": {"type": "object"},
            "uncertainty": {"type": "object", "description": "What the version's answers can carry: "
                            "`prediction_sets` and `out_of_distribution` (true or false); in the detail, the "
                            "method and the test-split figures of each."}}},
        "ModelList": {"type": "object", "required": ["default_model", "models"], "properties": {
            "default_model": {"type": "string"}, "models": {"type": "array", "items": ref("ModelSummary")},
            "serving": {"type": "object", "description": "How this replica was sized: `workers`, "
                        "`runtime_threads` (ONNX Runtime's, per worker), the `cpus` the cgroup allows and the "
                        "`source` that said so.", "properties": {
                            "workers": {"type": "integer"}, "runtime_threads": {"type": "integer"},
                            "cpus": {"type": "number"}, "source": {"type": "string"}}}}},
        "ModelDetail": {"allOf": [ref("ModelSummary"), {"type": "object", "required": ["available_versions"],
                                                        "properties": {
            "training": {"type": "object"}, "data": {"type": "object"}, "runtimes": {"type": "object"},
            "calibration": {"type": ["object", "null"], "description": "The temperature, fitted on the "
                            "validation hold-out, and ECE/NLL before and after on validation and test, and as "
                            "served; `reliability` holds the diagrams' bins."},
            "available_versions": {"type": "array", "items": {"type": "integer"}},
            "last_refused": {"type": "string"}}}]},
        "History": {"type": "object", "required": ["model", "current_version", "events"], "properties": {
            "model": {"type": "string"}, "current_version": {"type": "integer"},
            "events": {"type": "array", "items": {"type": "object", "required": ["event"], "properties": {
                "event": {"type": "string", "description": "`train`, `retrain` or `rollback`."},
                "version": {"type": ["integer", "null"]}, "promoted": {"type": "boolean"},
                "reason": {"type": "string"}, "time": {"type": "string"}}}}}},
        "V2ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string", "enum": kserve_v2.EXTENSIONS}}}},
        "V2Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "V2ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                            "properties": {"name": {"type": "string"},
                                           "versions": {"type": "array", "items": {"type": "string"}},
                                           "platform": {"type": "string"},
                                           "inputs": {"type": "array", "items": tensor},
                                           "outputs": {"type": "array", "items": tensor}}},
        "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor,
                       "description": f"`{kserve_v2.PIXELS_INPUT}` (FP32, [batch, 28, 28] or [batch, 32, 32, 3], "
                                      f"values in [0, 1]) or `{kserve_v2.IMAGE_INPUT}` (BYTES: encoded files, "
                                      "base64 in JSON)."},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "enum": list(kserve_v2.OUTPUTS)}, "parameters": {"type": "object"}}},
                "description": f"`{kserve_v2.SET_OUTPUT}` (BOOL [batch, classes]) and `{kserve_v2.UNSURE_OUTPUT}` "
                               "(BOOL [batch]) need the `coverage` (and `abstain_above`) parameters; "
                               f"`{kserve_v2.OOD_P_OUTPUT}` and `{kserve_v2.OOD_SCORE_OUTPUT}` (FP32 [batch]) the "
                               "model's out-of-distribution reference."},
            "parameters": {"type": "object", "properties": {
                "binary_data_output": {"type": "boolean"}, "coverage": COVERAGE_SCHEMA,
                "guarantee": GUARANTEE_SCHEMA, "abstain_above": ABSTAIN_SCHEMA}}}},
        "V2InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": tensor}}},
        "TFStatus": {"type": "object", "required": ["model_version_status"], "properties": {
            "model_version_status": {"type": "array", "items": {"type": "object", "properties": {
                "version": {"type": "string"}, "state": {"type": "string"}, "status": {"type": "object"}}}}}},
        "TFPredictRequest": {"type": "object", "properties": {
            "signature_name": {"type": "string", "enum": [tf_serving.SIGNATURE]},
            "instances": {"type": "array", "items": instance,
                          "description": 'Row format: each a `{"b64": ...}` image file or a pixel array.'},
            "inputs": {"description": "Columnar format: a list like `instances`, or `{\"image\": ...}` / "
                                      "`{\"pixels\": ...}`."},
            "coverage": {**COVERAGE_SCHEMA, "description": "Each prediction then names its outputs: "
                         "`probabilities`, `prediction_set` (labels), `unsure`, `ood_score`, `ood_p_value`."},
            "guarantee": GUARANTEE_SCHEMA, "abstain_above": ABSTAIN_SCHEMA}},
        "TFPredictResponse": {"type": "object", "properties": {
            "predictions": {"type": "array", "items": {"oneOf": [number_list, {"type": "object"}]},
                            "description": "Per instance the probabilities or, with `coverage`, its named outputs."},
            "outputs": {"oneOf": [{"type": "array", "items": number_list}, {"type": "object"}]}}},
        "TFClassifyRequest": {"type": "object", "required": ["examples"], "properties": {
            "signature_name": {"type": "string", "enum": [tf_serving.SIGNATURE]},
            "examples": {"type": "array", "items": instance}}},
        "TFClassifyResponse": {"type": "object", "required": ["result"], "properties": {"result": {
            "type": "array", "items": {"type": "array", "items": {
                "type": "array", "items": {"type": ["string", "number"]}, "minItems": 2, "maxItems": 2,
                "description": "[label, score]"}}}}},
    }


def openapi_document(example: Example = Example()) -> dict:
    try:
        service_version = version("image-classifier-service")
    except PackageNotFoundError:
        service_version = "unknown"
    return {
        "openapi": "3.1.0",
        "info": {"title": "image-classifier-service", "version": service_version,
                 "description": "Classify images with small Keras models. The same image gives the same "
                                "probabilities through each protocol: the native `/predict`, KServe V2 and "
                                "TensorFlow Serving REST.\n\nGuides: [the API](/guides/api.md), "
                                "[operations](/guides/operations.md), [training](/guides/training.md), "
                                "[performance](/guides/performance.md), [feedback](/guides/feedback.md). "
                                "[The web page](/) classifies dropped images and shows each model's card."
                                "\n\nAPI keys are off unless the server sets API_KEYS_FILE or API_KEYS_DATABASE "
                                "(see [operations](/guides/operations.md)). Then every operation with a lock "
                                "needs a key, as `X-API-Key: <key>` or `Authorization: Bearer <key>`, and "
                                "answers 401 without one, 403 for a key that is not valid or may not call the "
                                "model, 429 past the key's quota; health, metrics, the pages and the feedback "
                                "token's operations need none. `GET /models` lists only the models the key may "
                                "call."},
        "tags": [{"name": NATIVE, "description": "This service's own API."},
                 {"name": V2, "description": "KServe V2 / Open Inference Protocol (REST)."},
                 {"name": TF, "description": "TensorFlow Serving REST API."},
                 {"name": OPS, "description": "Health, metrics and pages."}],
        "paths": require_keys({**native_paths(example), **feedback_paths(example), **kserve_v2_paths(example),
                               **tf_serving_paths(example)}, KEYLESS_PATHS),
        "components": {"schemas": schemas(), "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": "An API key made by `python -m service keys add`; needed only when the "
                                      "server sets API_KEYS_FILE or API_KEYS_DATABASE."},
            "apiKeyBearer": {"type": "http", "scheme": "bearer",
                             "description": "The same API key, sent as `Authorization: Bearer <key>`."},
            "feedbackToken": {"type": "http", "scheme": "bearer", "description": "The server's FEEDBACK_TOKEN."}}},
    }
