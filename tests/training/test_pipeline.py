"""Real, small trainings on real Fashion-MNIST images, published into a temporary models folder."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from training.artifact import KERAS_FILE, ONNX_FILE, VERIFICATION_FILE
from training.datasets import Dataset
from training.pipeline import evaluate_version, make_config, train_and_publish
from contract.layout import METADATA_FILE, current_version, list_versions
from training.publish import publish_version, version_metadata
from training.train import train_and_evaluate

QUICK = dict(epochs=2, hidden_units=(64, 32), train_limit=3000, test_limit=1000, validation_size=500)


@pytest.fixture(scope="module")
def small_fashion(fashion) -> Dataset:
    return fashion


@pytest.fixture(scope="module")
def published(small_fashion, tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("models")
    version, result, metadata = train_and_publish(small_fashion, make_config("fashion_mnist", **QUICK), models_dir,
                                                  report=lambda line: None)
    return models_dir, version, result, metadata


def test_quick_training_learns_and_publishes_a_complete_version(published):
    models_dir, version, result, metadata = published
    assert version.version == 1 and current_version(models_dir, "fashion_mnist") == 1
    files = {p.name for p in version.path.iterdir()}
    assert {KERAS_FILE, ONNX_FILE, VERIFICATION_FILE, METADATA_FILE, "MODEL_CARD.md",
            "learning_curves.png", "confusion_matrix.png"} <= files
    assert metadata["metrics"]["test"]["accuracy"] > 0.6  # far above chance (0.1) after two short epochs
    assert [p.name for p in models_dir.joinpath("fashion_mnist").iterdir() if p.name.startswith(".staging")] == []


def test_metadata_describes_the_model(published):
    models_dir, version, result, metadata = published
    on_disk = version_metadata(models_dir, "fashion_mnist", 1).document
    assert on_disk == json.loads(json.dumps(metadata))
    assert on_disk["classes"][0] == "T-shirt/top" and len(on_disk["classes"]) == 10
    assert on_disk["input"] == {"shape": [28, 28], "dtype": "float32", "color_mode": "grayscale",
                                "value_range": [0.0, 1.0], "layout": "HW"}
    assert on_disk["preprocessing"]["invert_light_background"] is True
    assert len(on_disk["preprocessing"]["standardization"]["mean"]) == 1
    test = on_disk["metrics"]["test"]
    assert test["samples"] == 1000 and len(test["per_class"]) == 10
    assert np.array(test["confusion_matrix"]).sum() == 1000
    assert on_disk["training"]["config"]["seed"] == 0 and on_disk["training"]["epochs_run"] == 2
    assert on_disk["data"]["fingerprint"].startswith("sha256:")
    assert {"tensorflow", "keras", "onnx", "numpy", "python"} <= set(on_disk["libraries"])
    assert on_disk["runtimes"]["onnx"]["max_abs_diff_vs_keras"] < 1e-4
    assert "## Test results" in (version_card := (models_dir / "fashion_mnist" / "1" / "MODEL_CARD.md").read_text())
    # The recipe's ranks (256, 256) would not pay on (64, 32) layers: none used, none shown.
    assert "compression" not in on_disk["training"] and "linear" not in version_card
    assert f"{test['accuracy']:.2%}" in version_card


def test_accuracy_recomputed_from_the_saved_model_equals_the_recorded_figure(published, small_fashion):
    models_dir, *_ = published
    outcome = evaluate_version(models_dir, "fashion_mnist", small_fashion)
    assert outcome["measured"]["accuracy"] == outcome["recorded"]["accuracy"]
    assert outcome["measured"]["confusion_matrix"] == outcome["recorded"]["confusion_matrix"]
    assert outcome["measured"]["calibration"] == outcome["recorded"]["calibration"]  # ECE and NLL


def test_calibration_is_fitted_on_validation_baked_in_and_recorded(published):
    from training.evaluation import calibration_figures, reliability_bins
    from training.export import onnx_probabilities

    models_dir, version, result, metadata = published
    calibration = metadata["calibration"]
    # The first fifth of the hold-out fits the temperature; the rest is kept for the conformal step.
    assert calibration["temperature"] > 0 and calibration["validation"]["samples"] == 100
    for split in ("validation", "test"):
        assert set(calibration[split]["before"]) == set(calibration[split]["after"]) == {"ece", "nll"}
        # Temperature scaling minimizes the validation NLL, so it can only go down there.
        assert calibration["validation"]["after"]["nll"] <= calibration["validation"]["before"]["nll"]
    # The served runtime's figures are those of its own outputs, i.e. the temperature is in the graph.
    served = calibration["served"]
    model_file = {"onnx_int8": "model.int8.onnx", "onnx": ONNX_FILE}[served["runtime"]]
    probabilities = onnx_probabilities((version.path / model_file).read_bytes(), result.test_inputs)
    assert calibration_figures(result.test_labels, probabilities) == {k: served[k] for k in ("ece", "nll")}
    assert calibration["reliability"]["served"] == reliability_bins(result.test_labels, probabilities)
    card = (version.path / "MODEL_CARD.md").read_text()
    assert "## Calibration" in card and (version.path / "reliability.png").exists()


def test_sets_and_the_ood_reference_are_fitted_on_the_unused_half_and_load_in_the_service(published):
    from contract import conformal
    from service.inference.registry import load_version
    from training.uncertainty import served_outputs

    models_dir, version, result, metadata = published
    record = metadata["conformal"]
    assert record["samples"] == 400 == len(result.holdout_labels) and len(record["per_class"]) == 10
    assert record["levels"] == list(conformal.COVERAGE_LEVELS)
    # The test figures are what the stored thresholds do to the served probabilities.
    served = (version.path / "model.int8.onnx").read_bytes()
    probabilities, distances = served_outputs(served, result.test_inputs)
    from contract.ids import input_id
    u = conformal.tie_breaks([input_id(x) for x in result.test_inputs])
    again = conformal.coverage_report(probabilities, result.test_labels, u, conformal.Thresholds(record),
                                      tuple(metadata["classes"]))
    assert again == record["test"]
    ood = metadata["out_of_distribution"]
    assert ood["component_samples"] + ood["combined_samples"] == 400 and ood["test"]["test_images"] == 1000
    assert "auroc" not in ood["test"]  # this Dataset was built without a data directory: no probe to measure
    assert distances.shape == (1000,) and np.all(distances > 0)
    card = (version.path / "MODEL_CARD.md").read_text()
    assert "## Prediction sets" in card and "## Out-of-distribution p-value" in card
    loaded = load_version(models_dir, "fashion_mnist", 1, "auto")
    assert loaded.uncertainty.thresholds is not None and loaded.uncertainty.ood_reference is not None
    assert loaded.runtime.run(result.test_inputs[:4])[1].shape == (4,)


def test_onnx_export_reproduces_keras_on_real_test_images(published):
    from training.export import onnx_probabilities

    models_dir, version, result, metadata = published
    onnx_out = onnx_probabilities((version.path / ONNX_FILE).read_bytes(), result.test_inputs)
    assert np.max(np.abs(onnx_out - result.test_probabilities)) < 1e-4
    assert metadata["runtimes"]["onnx"]["test_accuracy"] == pytest.approx(metadata["metrics"]["test"]["accuracy"],
                                                                          abs=1e-3)


def test_the_int8_copy_is_measured_on_the_whole_test_set_and_published_within_its_budget(published, small_fashion):
    from training.artifact import INT8_ONNX_FILE
    from training.export import onnx_probabilities
    from training.quantize import MAX_ACCURACY_LOSS, quantize_and_measure
    from training.train import to_model_input

    models_dir, version, result, metadata = published
    report = metadata["quantization"]
    assert report["samples"] == len(result.test_labels) == 1000
    float_accuracy = metadata["runtimes"]["onnx"]["test_accuracy"]
    assert report["published"] == (float_accuracy - report["test_accuracy"] <= MAX_ACCURACY_LOSS + 1e-9)
    # The artifact says what was decided.
    assert ("onnx_int8" in metadata["runtimes"]) == (version.path / INT8_ONNX_FILE).exists() == report["published"]
    if report["published"]:
        int8_bytes = (version.path / INT8_ONNX_FILE).read_bytes()
        alone = onnx_probabilities(int8_bytes, result.test_inputs, batch_size=1)
        assert int(np.sum(alone.argmax(1) == result.test_labels)) == report["correct"]
        assert metadata["files"][INT8_ONNX_FILE].startswith("sha256:")
        with np.load(version.path / VERIFICATION_FILE) as samples:
            assert metadata["runtimes"]["onnx_int8"]["verification"]["outputs"] in samples.files

    # The rule both ways, on this model, and what an int8 model computes.
    arguments = ((version.path / ONNX_FILE).read_bytes(), to_model_input(small_fashion.x_train[:5000]),
                 result.test_inputs, result.test_labels, result.test_probabilities)
    int8_bytes, accepted = quantize_and_measure(*arguments, reference_accuracy=0.0)
    assert accepted["published"] and int8_bytes is not None
    refused_bytes, refused = quantize_and_measure(*arguments, reference_accuracy=accepted["test_accuracy"] + 0.01)
    assert refused_bytes is None and not refused["published"] and "loses 1.00%" in refused["reason"]
    alone = onnx_probabilities(int8_bytes, result.test_inputs, batch_size=1)
    assert np.array_equal(alone, onnx_probabilities(int8_bytes, result.test_inputs, batch_size=1000))
    assert np.allclose(alone.sum(axis=1), 1, atol=1e-5) and len(np.unique(alone)) > 1000  # not rounded to steps
    assert np.mean(alone.argmax(1) == result.test_probabilities.argmax(1)) > 0.95


def test_same_seed_gives_the_same_metrics_and_another_seed_does_not(small_fashion, published):
    _, _, first, _ = published
    config = make_config("fashion_mnist", **QUICK)
    again = train_and_evaluate(small_fashion, config, report=lambda line: None)
    assert again.test_metrics == first.test_metrics
    assert again.calibration == first.calibration and first.calibration is not None
    other = train_and_evaluate(small_fashion, make_config("fashion_mnist", **QUICK, seed=1), report=lambda line: None)
    assert not np.array_equal(other.test_probabilities, first.test_probabilities)


def test_a_failed_publish_leaves_nothing_and_keeps_the_pointer(published):
    models_dir, *_ = published

    def broken(folder, version):
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        publish_version(models_dir, "fashion_mnist", broken, promote=True)
    assert list_versions(models_dir, "fashion_mnist") == [1]
    assert current_version(models_dir, "fashion_mnist") == 1
    assert not [p for p in (models_dir / "fashion_mnist").iterdir() if p.name.startswith(".staging")]


def test_a_killed_publish_leaves_no_visible_version(published, tmp_path):
    models_dir, *_ = published
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from training.publish import publish_version
        def write(folder, version):
            (folder / "model.onnx").write_bytes(b"x" * 1000)
            print("writing", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write, as by the OOM killer or kill -9
        publish_version(Path({str(models_dir)!r}), "fashion_mnist", write, promote=True)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == -9 and "writing" in run.stdout
    folder = models_dir / "fashion_mnist"
    assert list_versions(models_dir, "fashion_mnist") == [1] and current_version(models_dir, "fashion_mnist") == 1
    assert not [p for p in folder.iterdir() if p.name.isdigit() and p.name != "1"]
    # The next publish sweeps the leftover staging folder away.
    publish_version(models_dir, "fashion_mnist", lambda f, v: (f / METADATA_FILE).write_text("{}"), promote=False)
    assert not [p for p in folder.iterdir() if p.name.startswith(".staging")]
    assert current_version(models_dir, "fashion_mnist") == 1


def test_cli_reports_bad_input_clearly(tmp_path):
    run = subprocess.run([sys.executable, "-m", "training", "--models-dir", str(tmp_path), "train", "cifar10",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "error: no cifar10 data found; tried:" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "training", "train", "imagenet"], capture_output=True, text=True)
    assert run.returncode == 2 and "invalid choice: 'imagenet'" in run.stderr


def test_the_monitoring_reference_is_recorded_at_publish_time_and_reproducible(published, small_fashion):
    """The service's drift metrics compare live traffic with it; recomputing it gives the recorded profile."""
    from training.reference import REFERENCE_SAMPLES, add_reference

    models_dir, version, result, metadata = published
    reference = metadata["monitoring_reference"]
    samples = min(REFERENCE_SAMPLES, len(small_fashion.x_train))
    assert reference["samples"] == samples
    for name in ("mean_intensity", "contrast"):
        assert len(reference[name]["edges"]) == 9
        assert reference[name]["fractions"] == pytest.approx([0.1] * 10, abs=0.02)
    assert sum(reference["predicted_class"]["fractions"]) == pytest.approx(1.0)
    assert 0.1 < reference["top1_probability_mean"] <= 1
    assert add_reference(models_dir, "fashion_mnist", version.version, small_fashion) == reference


def test_digits_are_never_mirrored():
    # A mirrored 2, 3 or 7 is no digit at all; shifts and grey backgrounds are what digits can take.
    config = make_config("mnist")
    assert config.flip is False and config.max_shift and config.max_background


def test_an_mnist_run_records_the_course_baseline_beside_its_own_figures(mnist, tmp_path):
    config = make_config("mnist", **{**QUICK, "train_limit": 2000, "test_limit": 500})
    version, result, metadata = train_and_publish(mnist, config, tmp_path, report=lambda line: None)
    baseline = metadata["metrics"]["baseline"]
    assert baseline["recipe"].startswith("Dense(512, relu) + softmax, RMSprop, 5 epochs, batch 128")
    assert baseline["test_samples"] == 500 and 0.8 < baseline["test_accuracy"] <= 1  # chance is 0.1
    assert 0 <= baseline["test_ece"] < 0.2 and 0.8 < baseline["validation_accuracy"] <= 1
    assert "subset of MNIST" in metadata["data"]["note"]
    card = (version.path / "MODEL_CARD.md").read_text()
    assert f"scores {100 * baseline['test_accuracy']:.2f}% on the same test images" in card
    assert "a subset of MNIST" in card


def test_a_low_rank_recipe_publishes_the_factored_model_with_the_wide_ones_figures(small_fashion, tmp_path):
    """The recipe's ranks factor the trained model (training/compress.py) before calibration; the published graphs
    are the factored ones, exported and quantized like any other, and the metadata keeps the wide model's
    accuracy beside them."""
    import onnx

    from training.export import onnx_probabilities

    config = make_config("fashion_mnist", **{**QUICK, "ranks": (16, 8)})
    version, result, metadata = train_and_publish(small_fashion, config, tmp_path, report=lambda line: None)
    compression = metadata["training"]["compression"]
    assert compression["ranks"] == [16, 8]
    assert compression["weights_wide"] == 784 * 64 + 64 * 32 + 32 * 10
    assert compression["weights"] == 784 * 16 + 16 * 64 + 64 * 8 + 8 * 32 + 32 * 10
    assert 0.5 < compression["test_accuracy_wide"] <= 1 and 0.5 < compression["validation_accuracy_wide"] <= 1
    assert 0.2 < compression["validation_accuracy"] <= 1  # ranks this small lose much; chance is 0.1
    assert [layer.name for layer in result.model.layers if layer.name.endswith("_factor")] == ["dense_1_factor",
                                                                                            "dense_2_factor"]
    graph = onnx.load(str(version.path / ONNX_FILE)).graph
    # Two per factored layer, one for the output; two more for the feature distance (whitening, class means).
    network = [node for node in graph.node if not node.output[0].startswith("ood_")
               and node.output[0] != "feature_distance"]
    assert sum(node.op_type == "MatMul" for node in network) == 5
    assert sum(node.op_type == "MatMul" for node in graph.node) == 7
    onnx_out = onnx_probabilities((version.path / ONNX_FILE).read_bytes(), result.test_inputs)
    assert np.max(np.abs(onnx_out - result.test_probabilities)) < 1e-4
    assert metadata["quantization"]["published"] and metadata["calibration"]["temperature"] > 0
    card = (version.path / "MODEL_CARD.md").read_text()
    assert "then each hidden kernel replaced by its truncated SVD at ranks [16, 8]" in card
    assert "Dense(16, linear)-Dense(64)-BN-ReLU" in card and "Dense(8, linear)-Dense(32)-BN-ReLU" in card
