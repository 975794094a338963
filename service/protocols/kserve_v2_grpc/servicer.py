"""The ``inference.GRPCInferenceService`` RPCs: thin, like the HTTP routes. Each resolves the model, runs the one
inference path and encodes the answer with the codec; the key check, the metrics (protocol ``kserve_v2_grpc``,
the RPC as the endpoint) and the status codes are done once, around every RPC."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from service.errors import ClientError
from service.http.state import AppState
from service.observability import metrics
from service.protocols.kserve_v2 import codec as rest
from service.protocols.kserve_v2_grpc import codec
from service.protocols.kserve_v2_grpc import grpc_predict_v2_pb2 as pb
from service.protocols.kserve_v2_grpc import grpc_predict_v2_pb2_grpc as pb_grpc

log = logging.getLogger("service.grpc")
OPEN_RPCS = {"ServerLive", "ServerReady"}  # like /v2/health/*: load balancers carry no key
# gRPC metadata keys are lower case; the key gate reads HTTP's header names.
KEY_HEADERS = {"x-api-key": "X-API-Key", "authorization": "Authorization"}


class Call(threading.local):
    """The RPC being served on this thread: its API key (charged for images by the inference path) and its
    model (the metrics label)."""

    key = None
    model = ""


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: AppState, call: Call):
        self.state = state
        self.call = call
        self.max_images = state.settings.max_images_per_request

    def ServerLive(self, request, context):
        return self._serve("ServerLive", context, lambda: pb.ServerLiveResponse(live=True))

    def ServerReady(self, request, context):
        return self._serve("ServerReady", context, lambda: pb.ServerReadyResponse(ready=self.state.ready()))

    def ServerMetadata(self, request, context):
        return self._serve("ServerMetadata", context, lambda: pb.ServerMetadataResponse(
            name=rest.SERVER_NAME, version=rest.server_version(), extensions=rest.EXTENSIONS))

    def ModelReady(self, request, context):
        def ready():
            self._model(request.name, request.version)
            return pb.ModelReadyResponse(ready=True)
        return self._serve("ModelReady", context, ready)

    def ModelMetadata(self, request, context):
        return self._serve("ModelMetadata", context,
                           lambda: codec.model_metadata(self._model(request.name, request.version)))

    def ModelInfer(self, request, context):
        def infer():
            model = self._model(request.model_name, request.model_version)
            parsed = codec.parse_model_infer(request, self.max_images)
            outputs, classified, sets = rest.run_inference(self.state.inference, model, parsed,
                                                           bool(request.model_version))
            return codec.encode_model_infer(classified.model, parsed.id, outputs, classified, sets)
        return self._serve("ModelInfer", context, infer)

    def _model(self, name: str, version: str):
        self.call.model = "unknown"
        model = self.state.model_for(name, version or None, self.call.key)
        self.call.model = model.name
        return model

    def _serve(self, rpc: str, context: grpc.ServicerContext, answer: Callable):
        started = time.perf_counter()
        self.call.key, self.call.model = None, ""
        code = grpc.StatusCode.OK
        try:
            if self.state.access is not None and rpc not in OPEN_RPCS:
                headers = {KEY_HEADERS[k]: v for k, v in context.invocation_metadata() if k in KEY_HEADERS}
                self.call.key = self.state.access.authenticate(headers)
            return answer()
        except ClientError as error:
            code = codec.status_code(error)
            if "Retry-After" in error.headers:
                context.set_trailing_metadata((("retry-after", error.headers["Retry-After"]),))
            context.abort(code, error.message)
        except Exception:
            log.exception("unhandled error in %s", rpc)
            code = grpc.StatusCode.INTERNAL
            context.abort(code, "the server failed to handle this call")
        finally:
            metrics.series(metrics.REQUESTS, codec.NAME, rpc, self.call.model, code.name).inc()
            metrics.series(metrics.REQUEST_DURATION, rpc).observe(time.perf_counter() - started)

