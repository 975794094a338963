"""MLServer: a custom runtime over the shared classifier; MLServer runs it in its parallel inference workers.

Input ``image``: encoded images as a BYTES tensor in V2 JSON (base64, ``content_type: base64``); output
``probabilities`` (FP32).
"""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from classifier import classify, load_session


class Classifier(MLModel):
    async def load(self) -> bool:
        self.session = load_session()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = Base64Codec.decode_input(payload.inputs[0])
        probabilities = classify(self.session, list(images)).astype(np.float32)
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output("probabilities", probabilities)])
