"""LitServe: two inference workers on the CPU, multipart uploads (field ``image``) on ``POST /predict``."""

import os

import litserve as ls

from classifier import classify, load_session


class ClassifierAPI(ls.LitAPI):
    def setup(self, device):
        self.session = load_session()

    def decode_request(self, request):
        return request["image"].file.read()

    def predict(self, image: bytes):
        return classify(self.session, [image])[0]

    def encode_response(self, probabilities):
        return {"probabilities": probabilities.tolist()}


if __name__ == "__main__":
    server = ls.LitServer(ClassifierAPI(), accelerator="cpu", devices=1, workers_per_device=2)
    server.run(host="127.0.0.1", port=int(os.environ["PEER_PORT"]), generate_client_file=False, log_level="warning")
