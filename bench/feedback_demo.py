"""The feedback loop end to end, on real data: production "photos" the served model is bad at, labeled through
``POST /feedback``, learned by one ``retrain``.

    python bench/feedback_demo.py [--dataset fashion_mnist] [--feedback 2000] [--held-out 1000]
                                  [--weight 1.0] [--tolerance 0.005] [--epochs N]

On a copy of ``models/`` in a temporary folder: starts the service (gunicorn, 127.0.0.1, a free port, a
feedback token), turns ``--feedback`` training images into 96x96 JPEG photos (``training/photos.py``) and
``--held-out`` test images into photos of the same kind, measures the champion on the held-out photos through
``/predict``, sends the feedback photos with their true labels through ``/feedback``, runs
``python -m training retrain`` on the same models folder (the service's SQLite feedback store), waits for the
service to serve the outcome and measures the held-out photos again. Prints every figure and writes them to
``bench/results/feedback_demo.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Server  # noqa: E402

TOKEN = "feedback-demo-token"


def accuracy(port: int, model: str, photos: list[bytes], labels) -> tuple[float, set[int]]:
    """Top-1 accuracy of the served model on the photos, and the versions that answered."""
    correct, versions = 0, set()
    with requests.Session() as session:
        for photo, label in zip(photos, labels):
            response = session.post(f"http://127.0.0.1:{port}/predict", params={"model": model},
                                    files={"image": ("photo.jpg", photo, "image/jpeg")}, timeout=30)
            response.raise_for_status()
            body = response.json()
            versions.add(body["version"])
            correct += body["predictions"][0]["top"][0]["index"] == int(label)
    return correct / len(photos), versions


def send_feedback(port: int, model: str, photos: list[bytes], labels, classes: list[str]) -> dict:
    counts = {"stored": 0, "duplicate": 0}
    with requests.Session() as session:
        for photo, label in zip(photos, labels):
            response = session.post(f"http://127.0.0.1:{port}/feedback",
                                    headers={"Authorization": f"Bearer {TOKEN}"},
                                    data={"model": model, "label": classes[int(label)]},
                                    files={"image": ("photo.jpg", photo, "image/jpeg")}, timeout=30)
            response.raise_for_status()
            counts["stored" if response.json()["stored"] else "duplicate"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--feedback", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import numpy as np

    from training.datasets import load_dataset
    from training.photos import make_photos

    dataset = load_dataset(args.dataset, args.data_dir)
    classes = list(dataset.spec.classes)
    rng = np.random.default_rng(args.seed)
    feedback_idx = rng.choice(len(dataset.x_train), args.feedback, replace=False)
    held_idx = rng.choice(len(dataset.x_test), args.held_out, replace=False)
    feedback_photos = make_photos(dataset.x_train[feedback_idx], args.seed)
    held_photos = make_photos(dataset.x_test[held_idx], args.seed + 1)
    feedback_labels, held_labels = dataset.y_train[feedback_idx], dataset.y_test[held_idx]
    figures: dict = {"dataset": args.dataset, "feedback_photos": args.feedback, "held_out_photos": args.held_out,
                     "weight": args.weight, "tolerance": args.tolerance}

    with tempfile.TemporaryDirectory(prefix="feedback-demo-") as workdir:
        models_dir = Path(workdir) / "models"
        shutil.copytree(ROOT / "models", models_dir)
        server = Server(None, 2, models_dir, FEEDBACK_TOKEN=TOKEN, FEEDBACK_RATE_PER_MINUTE="100000",
                        MODEL_RELOAD_SECONDS="1")
        try:
            before, versions = accuracy(server.port, args.dataset, held_photos, held_labels)
            figures["champion"] = {"versions": sorted(versions), "held_out_photo_accuracy": before}
            print(f"champion v{sorted(versions)}: {before:.2%} on {args.held_out} held-out photos", flush=True)
            started = time.monotonic()
            figures["sent"] = send_feedback(server.port, args.dataset, feedback_photos, feedback_labels, classes)
            figures["feedback_seconds"] = round(time.monotonic() - started, 1)
            stats = requests.get(f"http://127.0.0.1:{server.port}/feedback/stats",
                                 params={"model": args.dataset}, timeout=10).json()["models"][0]
            figures["feedback_stats"] = {"items": stats["items"], "agreement": stats["agreement"]}
            print(f"sent {args.feedback} labeled photos in {figures['feedback_seconds']} s: {figures['sent']}; "
                  f"production agreement {stats['agreement']:.2%}", flush=True)

            command = [sys.executable, "-m", "training", "--models-dir", str(models_dir), "retrain", args.dataset,
                       "--data-dir", args.data_dir, "--tolerance", str(args.tolerance),
                       "--feedback-weight", str(args.weight), "--seed", str(args.seed)]
            if args.epochs:
                command += ["--epochs", str(args.epochs)]
            started = time.monotonic()
            subprocess.run(command, cwd=ROOT, check=True)
            figures["retrain_seconds"] = round(time.monotonic() - started, 1)
            record = [json.loads(line) for line in
                      (models_dir / args.dataset / "history.jsonl").read_text().splitlines()][-1]
            figures["retrain"] = {k: record.get(k) for k in ("version", "outcome", "reason", "candidate",
                                                              "champion", "production")}
            time.sleep(3)  # two reload intervals: every worker serves the outcome
            after, versions = accuracy(server.port, args.dataset, held_photos, held_labels)
            figures["after"] = {"versions": sorted(versions), "held_out_photo_accuracy": after}
            print(f"retrain: {record['outcome']} v{record['version']} ({record['reason']})", flush=True)
            print(f"served v{sorted(versions)}: {after:.2%} on the held-out photos (was {before:.2%})", flush=True)
        finally:
            server.stop()
    out = ROOT / "bench" / "results" / "feedback_demo.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
