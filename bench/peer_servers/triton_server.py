"""Triton Inference Server (PyTriton): two Python model instances behind Triton's dynamic batcher.

Input ``image``: one encoded image per request (BYTES); output ``probabilities`` (FP32).
"""

import os

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from classifier import classify, load_session


def make_infer():
    session = load_session()

    @batch
    def infer(image: np.ndarray):
        return {"probabilities": classify(session, [bytes(row[0]) for row in image])}

    return infer


if __name__ == "__main__":
    port = int(os.environ["PEER_PORT"])
    config = TritonConfig(http_address="127.0.0.1", http_port=port, allow_grpc=False, allow_metrics=False,
                          log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="classifier",
            infer_func=[make_infer(), make_infer()],  # two instances
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher()),
            strict=False,
        )
        triton.serve()
