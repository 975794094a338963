"""Served accuracy and calibration: every test image of every shipped model through a live server's /predict.

    python bench/served_accuracy.py [--datasets-dir ../shared/datasets] [--models-dir models]

The figures a model's metadata records are measured offline on decoded arrays; this sends the same test images
as files, the way a client would (Fashion-MNIST and MNIST encoded as PNG, CIFAR-10 as the JPEG files of the
copy), 32 per request, to the service under gunicorn on 127.0.0.1, and prints the accuracy and the ECE/NLL of
what came back beside the recorded int8 figures. Results go to ``bench/results/served_accuracy.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peers import MULTIPART_TYPE, multipart  # noqa: E402
from run import Server  # noqa: E402

PER_REQUEST = 32


def test_files(name: str, datasets_dir: Path, classes: list[str]) -> tuple[list[bytes], str, np.ndarray]:
    """Every test image of a dataset as the file a client would send, with its label."""
    from PIL import Image

    from training.datasets import load_dataset, unpack_archive

    if name == "cifar10":
        folder = unpack_archive(datasets_dir / "cifar10-jpeg.tar.gz") / "test"
        files = [(index, path) for index, label in enumerate(classes)
                 for path in sorted((folder / label).glob("*.jpg"))]
        return [path.read_bytes() for _, path in files], "image/jpeg", np.array([index for index, _ in files])
    dataset = load_dataset(name, datasets_dir, download=False)
    pngs = []
    for pixels in dataset.x_test:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs, "image/png", dataset.y_test


def served_probabilities(port: int, name: str, images: list[bytes], content_type: str) -> np.ndarray:
    rows = []
    for start in range(0, len(images), PER_REQUEST):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict?model={name}",
                                         data=multipart(images[start:start + PER_REQUEST], content_type),
                                         headers={"Content-Type": MULTIPART_TYPE}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            rows += [p["probabilities"] for p in json.load(response)["predictions"]]
    return np.array(rows, dtype=np.float64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--datasets-dir", type=Path,
                        default=Path(os.environ.get("DATASETS_DIR", ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "served_accuracy.json")
    args = parser.parse_args()
    from training.evaluation import calibration_figures

    server = Server(None, 2, args.models_dir)
    results = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/models", timeout=10) as response:
            listing = json.load(response)["models"]
        for model in listing:
            name = model["name"]
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/models/{name}", timeout=10) as response:
                described = json.load(response)
            images, content_type, labels = test_files(name, args.datasets_dir, described["classes"])
            started = time.monotonic()
            probabilities = served_probabilities(server.port, name, images, content_type)
            correct = int(np.sum(probabilities.argmax(axis=1) == labels))
            results[name] = {"version": described["version"], "images": len(labels), "correct": correct,
                             "accuracy": correct / len(labels), **calibration_figures(labels, probabilities),
                             "recorded_int8_accuracy": described["metrics"]["served_test_accuracy"],
                             "seconds": round(time.monotonic() - started, 1)}
            row = results[name]
            print(f"{name} v{row['version']}: {row['correct']}/{row['images']} = {row['accuracy']:.2%} through "
                  f"/predict (recorded offline: {row['recorded_int8_accuracy']:.2%}), ECE {row['ece']:.4f}, "
                  f"NLL {row['nll']:.4f}, {row['seconds']} s", flush=True)
    finally:
        server.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
