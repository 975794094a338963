"""The TensorFlow Serving endpoints under ``/v1/models`` (the codec is codec.py)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from service.errors import NotFound
from service.http.routing import model_route
from service.http.state import AppState
from service.inference.classify import Classified
from service.inference.registry import LoadedModel
from service.inference.uncertainty import parse_set_options, prediction_sets
from service.protocols.common import MODEL_VERSION_HEADER, PREDICTION_IDS_HEADER
from service.protocols.tf_serving import codec


def blueprint(state: AppState) -> Blueprint:
    routes = Blueprint("tf_serving", __name__, url_prefix="/v1/models")
    settings = state.settings

    def run(model: LoadedModel, items: list, pinned: bool) -> Classified:
        decoded = codec.decode_instances(items, settings.max_images_per_request)
        if isinstance(decoded, list):
            return state.inference.classify_images(model, decoded, pinned)
        return state.inference.classify_pixels(model, decoded, pinned)

    @model_route(routes, "GET", "")
    def status(name: str, version: str | None = None):
        return jsonify(codec.model_status(state.served_model(name, version)))

    @model_route(routes, "GET", "", "/metadata")
    def metadata(name: str, version: str | None = None):
        return jsonify(codec.model_metadata(state.served_model(name, version)))

    @routes.post("/<target>")
    @routes.post("/<name>/versions/<target>")
    def call(target: str, name: str | None = None):
        """``<model>:predict`` / ``<model>:classify``, or the same after ``/versions/<version>``."""
        head, _, verb = target.rpartition(":")
        name, version = (head, None) if name is None else (name, head)
        if not head or verb not in ("predict", "classify"):
            raise NotFound("no such endpoint; POST /v1/models/<model>[/versions/<version>]:predict or :classify")
        model = state.served_model(name, version)
        document = codec.parse_body(request.get_data(cache=False))
        if verb == "classify":
            classified = run(model, codec.examples(document), version is not None)
            response = jsonify({"result": codec.classify_result(classified.model, classified.probabilities)})
        else:
            items, layout = codec.predict_items(document)
            options = parse_set_options(document.get("coverage"), document.get("guarantee"),
                                        document.get("abstain_above"), model)
            classified = run(model, items, version is not None)
            answered = classified.model  # the candidate, for a canary's share of inputs
            if options is None:
                predictions = classified.probabilities.tolist()
            else:
                predictions = codec.named_outputs(answered, classified, prediction_sets(answered, classified, options))
                if layout == "columnar":  # one list per output name
                    predictions = {name: [row[name] for row in predictions] for name in predictions[0]}
            response = jsonify({"predictions": predictions} if layout == "row" else {"outputs": predictions})
        # The TF Serving body has no room for ids: they travel in a header, in the order of the inputs.
        response.headers[PREDICTION_IDS_HEADER] = ",".join(classified.ids)
        response.headers[MODEL_VERSION_HEADER] = str(classified.model.version)  # nor for the answering version
        return response

    return routes
