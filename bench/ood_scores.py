"""Which out-of-distribution score to serve, measured: AUROC of candidate scores on the shipped models.

Pairs (out-of-distribution images as the positive class): the Fashion-MNIST model, its test split against MNIST
digits; the CIFAR-10 model, its test split against Fashion-MNIST test images upscaled to 32x32 RGB (and MNIST's
model against Fashion-MNIST). Candidates: the top probability, the energy of the logits, each statistic of the
served score alone, Fisher's combination of them, and the served score (Tippett's combination), which is what
``/predict`` answers.

    python bench/ood_scores.py [--data-dir ../shared/datasets] [--models-dir models]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract import ood  # noqa: E402
from contract.layout import current_version, version_dir  # noqa: E402
from contract.metadata import read_metadata  # noqa: E402


def logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def candidate_scores(folder: Path, record: dict, inputs: np.ndarray) -> dict[str, np.ndarray]:
    import keras

    from training.train import output_logits
    from training.uncertainty import served_outputs

    served = (folder / "model.int8.onnx").read_bytes()
    probabilities, distance = served_outputs(served, inputs)
    logits = output_logits(keras.models.load_model(folder / "model.keras"), inputs)
    components = ood.component_p_values(record, ood.input_statistics(inputs, distance))
    scores = {"1 - top probability": 1 - probabilities.max(axis=1), "energy (-logsumexp of logits)":
              -logsumexp(logits)}
    for name, p_values in zip(ood.STATISTICS, components):
        scores[f"{name.replace('_', ' ')} alone"] = -np.log(p_values)
    scores["Fisher's combination of the three"] = -2 * np.sum(np.log(components), axis=0)
    scores["served: Tippett's combination (smallest p)"] = ood.ood_scores(record, inputs, distance)[0]
    return scores


def main() -> None:
    from training.datasets import load_dataset
    from training.uncertainty import OOD_PROBES, probe_images

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args()
    table: dict[str, dict[str, float]] = {}
    for name in ("fashion_mnist", "cifar10", "mnist"):
        version = current_version(args.models_dir, name)
        folder = version_dir(args.models_dir, name, version)
        record = read_metadata(folder).document.get("out_of_distribution")
        if record is None:
            print(f"{name} v{version}: no out-of-distribution record (published before it); skipped")
            continue
        dataset = load_dataset(name, args.data_dir)
        probe, description = probe_images(dataset, args.data_dir, print)
        inside = candidate_scores(folder, record, dataset.x_test.astype(np.float32) / np.float32(255))
        outside = candidate_scores(folder, record, probe)
        column = f"{name} v{version} vs {OOD_PROBES[name][1]}"
        table[column] = {score: ood.auroc(inside[score], outside[score]) for score in inside}
        print(f"{column}: {len(dataset.x_test):,} test images against {description}")
    columns = list(table)
    print("\n| score | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for score in next(iter(table.values())):
        print(f"| {score} | " + " | ".join(f"{table[c][score]:.3f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
