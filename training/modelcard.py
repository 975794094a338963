"""A readable model card (Markdown) with learning curves and the confusion matrix as PNG plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MODEL_CARD_FILE = "MODEL_CARD.md"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
RELIABILITY_FILE = "reliability.png"


def plot_learning_curves(history: dict[str, list[float]], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if history.get(key):
                axis.plot(range(1, len(history[key]) + 1), history[key], label=label)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    values = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(6.4, 5.6), dpi=80)
    axis.imshow(values, cmap="Blues")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = values.max() / 2
    for (row, col), count in np.ndenumerate(values):
        axis.text(col, row, str(count), ha="center", va="center", fontsize=7,
                  color="white" if count > threshold else "black")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_reliability(reliability: dict[str, list[dict]], path: Path) -> None:
    """Accuracy against confidence per bin, before and after calibration; the diagonal is perfect calibration."""
    figure, axis = plt.subplots(figsize=(4.6, 4.2), dpi=80)
    axis.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfectly calibrated")
    for key, label, marker in (("before", "before calibration", "o"), ("served", "as served", "s")):
        rows = [r for r in reliability.get(key, []) if r["samples"]]
        axis.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker=marker, label=label)
    axis.set_xlabel("top-1 probability (bin mean)")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def calibration_section(metadata: dict) -> str:
    calibration = metadata.get("calibration")
    if not calibration:
        return ""
    validation, test, served = calibration["validation"], calibration["test"], calibration["served"]
    return f"""
## Calibration
Temperature scaling: T = {calibration['temperature']:.4f}, fitted on the {validation['samples']:,} validation
images and divided into the output layer, so every runtime returns calibrated probabilities.

| | ECE (15 bins) before | after | NLL before | after |
|---|---|---|---|---|
| validation | {validation['before']['ece']:.4f} | {validation['after']['ece']:.4f} | {validation['before']['nll']:.4f} | {validation['after']['nll']:.4f} |
| test | {test['before']['ece']:.4f} | {test['after']['ece']:.4f} | {test['before']['nll']:.4f} | {test['after']['nll']:.4f} |

As served (`{served['runtime']}`), on the test split: ECE **{served['ece']:.4f}**, NLL {served['nll']:.4f}.

![reliability diagram]({RELIABILITY_FILE})
"""


def conformal_section(metadata: dict) -> str:
    record = metadata.get("conformal")
    if not record:
        return ""
    test = record["test"]
    samples = record["samples_per_class"]
    lines = []
    for guarantee, label in (("per_class", "per class (Mondrian)"), ("marginal", "marginal")):
        for row in test[guarantee]:
            lines.append(f"| {label} | {row['coverage_target']:.2f} | {row['coverage']:.2%} | "
                         f"{row['min_class_coverage']:.2%} | {row['mean_set_size']:.2f} | {row['empty_sets']:.2%} |")
    per_class = test["per_class"][1]  # 0.9
    header = " | ".join(c["class"] for c in per_class["per_class"])
    coverage = " | ".join(f"{c['coverage']:.1%}" for c in per_class["per_class"])
    sizes = " | ".join(f"{c['mean_set_size']:.2f}" for c in per_class["per_class"])
    return f"""
## Prediction sets
Split conformal prediction (APS scores randomized by the prediction id), fitted on {record['samples']:,} validation
images that neither training nor the temperature saw ({min(samples)} to {max(samples)} per class), with the
served runtime's probabilities. `/predict?coverage=0.9` returns, per image, a set of labels that holds the
true one with probability at least 0.9: for each true class with the per-class guarantee (the default), on
average over images with the marginal one. On the {metadata['metrics']['test']['samples']:,} test images:

| guarantee | target | coverage | lowest class | mean set size | empty sets |
|---|---|---|---|---|---|
""" + "\n".join(lines) + f"""

Per class at 0.90 (per-class guarantee):

| | {header} |
|{'---|' * (len(per_class['per_class']) + 1)}
| coverage | {coverage} |
| mean set size | {sizes} |

A set may be empty when the coverage asked is below the model's accuracy: the guarantee is then met without
naming a label for the images the model is surest of. The guarantee holds for images like the calibration
images; under drift it does not, which is what the out-of-distribution p-value is for.
"""


def ood_section(metadata: dict) -> str:
    record = metadata.get("out_of_distribution")
    if not record:
        return ""
    test = record["test"]
    if "auroc" in test:
        by_statistic = ", ".join(f"{name.replace('_', ' ')} {value:.3f}"
                                 for name, value in test["auroc_by_statistic"].items())
        probe = (f"Against {test['probe']}: **AUROC {test['auroc']:.3f}** (each statistic alone: {by_statistic}); "
                 f"at p <= 0.01, {test['probe_flagged_at_0.01']:.1%} of those images are flagged and "
                 f"{test['test_flagged_at_0.01']:.1%} of the {test['test_images']:,} test images.")
    else:
        probe = (f"No out-of-distribution probe was available when this version was published; at p <= 0.01, "
                 f"{test['test_flagged_at_0.01']:.1%} of the test images are flagged.")
    return f"""
## Out-of-distribution p-value
Each answer carries a p-value of how unlike the training data its input is: the share of held-out training-
distribution images ({record['reference']}) that look at least as unusual, the smallest of three p-values: the feature
distance (Mahalanobis, last hidden layer), the mean intensity and the contrast. {probe}
"""


def production_section(metadata: dict) -> str:
    production = metadata.get("metrics", {}).get("production")
    if not production:
        return ""
    return f"""
## Production feedback
{production['train_samples']:,} labeled images from production feedback were added to the training data (loss
weight {production['weight']}); {production['samples']:,} more, held out, form the production set:
**accuracy {production['accuracy']:.2%}** on it.
"""


def render_model_card(metadata: dict) -> str:
    return (f"""# {metadata['name']} v{metadata['version']}

Dense-only image classifier ({metadata['input']['color_mode']} {'x'.join(map(str, metadata['input']['shape']))}),
{metadata['training']['parameters']:,} parameters, created {metadata['created_at']}.
""" + results_section(metadata) + calibration_section(metadata) + conformal_section(metadata)
            + ood_section(metadata) + production_section(metadata)
            + training_section(metadata) + data_section(metadata))


def results_section(metadata: dict) -> str:
    test = metadata["metrics"]["test"]
    onnx_report = metadata["runtimes"]["onnx"]
    int8 = metadata.get("quantization")
    if int8 is None:
        int8_line = ""
    elif int8["published"]:
        int8_line = (f"\nThe int8 copy (`model.int8.onnx`, served by default) scores **{int8['test_accuracy']:.2%}** "
                     f"and agrees with Keras on {int8['agreement_with_keras']:.2%} of the test images.")
    else:
        int8_line = f"\nNo int8 copy was published: {int8['reason']}."
    rows = "\n".join(
        f"| {c['class']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
        for c in test["per_class"]
    )
    note = metadata["data"].get("note")
    baseline = baseline_line(metadata["metrics"].get("baseline"))
    return f"""
## Test results
Measured once, after training, on {test['samples']:,} test images: **top-1 accuracy {test['accuracy']:.2%}**,
macro F1 {test['macro_f1']:.3f}, log loss {test['log_loss']:.3f}.
The float32 ONNX graph agrees with Keras on {onnx_report['agreement_with_keras']:.2%} of the test images
(largest probability difference {onnx_report['max_abs_diff_vs_keras']:.1e}).{int8_line}{baseline}
{f'{chr(10)}> {note}{chr(10)}' if note else ''}
| class | precision | recall | F1 | images |
|---|---|---|---|---|
{rows}

![confusion matrix]({CONFUSION_FILE})
"""


def baseline_line(baseline: dict | None) -> str:
    if not baseline:
        return ""
    return (f"\nThe course's first model ({baseline['recipe']}), trained on the same images, scores "
            f"{baseline['test_accuracy']:.2%} on the same test images (ECE {baseline['test_ece']:.3f}, "
            "uncalibrated): the baseline this recipe is measured against.")


def compression_line(compression: dict | None) -> str:
    if not compression:
        return ""
    return (f"\nTrained as the wide network ({compression['weights_wide']:,} matrix weights, test accuracy "
            f"{compression['test_accuracy_wide']:.2%}), then each hidden kernel replaced by its truncated SVD at "
            f"ranks {compression['ranks']} (0: kept whole): {compression['weights']:,} weights, "
            f"{compression['weights_wide'] / compression['weights']:.1f}x fewer for every served image to read "
            "(training/compress.py).\n")


def training_section(metadata: dict) -> str:
    training = metadata["training"]
    config = training["config"]
    # The ranks used (recorded by training/compress.py), not the recipe's: a rank that would not pay is not used.
    ranks = list(training.get("compression", {}).get("ranks", ())) + [0] * len(config["hidden_units"])
    layers = " -> ".join(["Flatten", "standardize"] + [
        (f"Dense({rank}, linear)-" if rank else "") + f"Dense({u})-BN-ReLU-Dropout({config['dropout']})"
        for u, rank in zip(config["hidden_units"], ranks)] + ["Dense(10, softmax)"])
    mixup = f"MixUp alpha {config['mixup_alpha']}" if config.get("mixup_alpha") else "no MixUp"
    background = f", grey backgrounds up to {config['max_background']}" if config.get("max_background") else ""
    return f"""
## Training
`{layers}`
{compression_line(training.get("compression"))}
{training['epochs_run']} epochs in {training['duration_seconds'] / 60:.1f} minutes; AdamW (learning rate
{config['learning_rate']}, weight decay {config['weight_decay']}, cosine schedule with warm-up), batch
{config['batch_size']}, label smoothing {config['label_smoothing']}, random flips: {config['flip']},
random shifts up to {config['max_shift']} px{background}, {mixup}, seed {config['seed']}.
{config['validation_size']} training images were held out for the validation curve and calibration; the test
split was not used until the end.

![learning curves]({CURVES_FILE})
"""


def data_section(metadata: dict) -> str:
    data, preprocessing, spec = metadata["data"], metadata["preprocessing"], metadata["input"]
    return f"""
## Data
Source `{data['source']}`, fingerprint `{data['fingerprint']}`,
{data['train_samples']:,} train and {data['test_samples']:,} test images.

## Input contract
Pillow decodes the upload ({preprocessing['decode']}), converts it to
{spec['color_mode']}, {'inverts it when its background is light, ' if preprocessing[
        'invert_light_background'] else ''}fits it inside {'x'.join(map(str, spec['shape'][:2]))}
keeping the aspect ratio, and scales pixels to [0, 1]. Standardization is inside the model.

## Limits
Trained on small, centered, single-object images of {len(metadata['classes'])} classes; anything else is
still forced into one of them.
"""


def write_model_card(folder: Path, metadata: dict) -> None:
    plot_learning_curves(metadata["training"]["history"], folder / CURVES_FILE)
    plot_confusion_matrix(metadata["metrics"]["test"]["confusion_matrix"], metadata["classes"], folder / CONFUSION_FILE)
    if metadata.get("calibration"):
        plot_reliability(metadata["calibration"]["reliability"], folder / RELIABILITY_FILE)
    (folder / MODEL_CARD_FILE).write_text(render_model_card(metadata))
