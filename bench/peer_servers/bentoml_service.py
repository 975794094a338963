"""BentoML: a service with two workers, access log off; multipart uploads (field ``image``) on ``POST /predict``."""

from pathlib import Path

import bentoml

from classifier import classify, load_session


@bentoml.service(workers=2, logging={"access": {"enabled": False}})  # the service logs no requests either
class Classifier:
    def __init__(self):
        self.session = load_session()

    @bentoml.api
    def predict(self, image: Path) -> dict:
        return {"probabilities": classify(self.session, [image.read_bytes()])[0].tolist()}
