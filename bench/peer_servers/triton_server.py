"""Triton Inference Server (PyTriton): two Python model instances behind Triton's dynamic batcher.

Input ``image``: one encoded image per request (BYTES); output ``probabilities`` (FP32). Over HTTP on
``PEER_PORT``, and over gRPC on ``PEER_GRPC_PORT`` when it is set and not 0.
"""

import os

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

from classifier import classify, load_session


def make_infer():
    session = load_session()

    @batch
    def infer(image: np.ndarray):
        return {"probabilities": classify(session, [bytes(row[0]) for row in image])}

    return infer


if __name__ == "__main__":
    port = int(os.environ["PEER_PORT"])
    grpc_port = int(os.environ.get("PEER_GRPC_PORT") or 0)  # 0: no gRPC
    config = TritonConfig(http_address="127.0.0.1", http_port=port, allow_grpc=bool(grpc_port),
                          grpc_address="127.0.0.1", grpc_port=grpc_port or None, allow_metrics=False,
                          log_verbose=0)
    # The statistics extension open (the bench reads how many calls succeeded); the other admin APIs stay behind
    # PyTriton's generated token.
    security = TritonSecurityConfig(
        restricted_endpoints=[name for name in DEFAULT_PROTECTED_ENDPOINTS if name != "statistics"])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name="classifier",
            infer_func=[make_infer(), make_infer()],  # two instances
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher()),
            strict=False,
        )
        triton.serve()
