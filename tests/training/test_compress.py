"""Low-rank factorization of a trained MLP (training/compress.py): pure maths on small random networks."""

import keras
import numpy as np

from training.architectures import build_mlp
from training.compress import effective_ranks, factorize, weight_count


def wide_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_mlp("fashion_mnist", (28, 28), 10, (96, 48), 0.0, np.float32(0.3), np.float32(0.35))
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # trained-looking BatchNorm statistics, so folding them is exercised
        if isinstance(layer, keras.layers.BatchNormalization):
            units = layer.gamma.shape[0]
            gamma, beta = rng.uniform(0.5, 1.5, units), rng.normal(0, 0.1, units)
            mean, variance = rng.normal(0, 0.5, units), rng.uniform(0.5, 2, units)
            layer.set_weights([w.astype(np.float32) for w in (gamma, beta, mean, variance)])
    return model


def kernel(model: keras.Model, name: str) -> np.ndarray:
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel).astype(np.float64)


def test_a_rank_is_used_only_where_it_saves_weights():
    assert effective_ranks(784, (1024, 512), (256, 256)) == (256, 256)
    assert effective_ranks(784, (64, 32), (256, 256)) == (0, 0)  # 256 x (784 + 64) > 784 x 64
    assert effective_ranks(3072, (1024, 512), (128,)) == (128, 0)  # missing ranks keep their layers whole
    assert effective_ranks(784, (96, 48), (0, 8)) == (0, 8)


def test_ranks_that_pay_shrink_the_network_and_the_others_keep_it_as_it_is():
    wide = wide_model()
    factored = factorize(wide, (96, 48), (80, 30), dropout=0.0)  # 80 < 784*96/880 and 30 < 96*48/144: kept
    assert [layer.name for layer in factored.layers if layer.name.endswith("_factor")] == ["dense_1_factor",
                                                                                            "dense_2_factor"]
    images = np.random.default_rng(1).random((64, 28, 28), dtype=np.float32)
    full = factorize(wide, (96, 48), (96, 48), dropout=0.0)  # ranks that do not pay: the layers kept whole
    assert not [layer for layer in full.layers if layer.name.endswith("_factor")]
    np.testing.assert_allclose(full.predict(images, verbose=0), wide.predict(images, verbose=0), atol=1e-6)
    assert weight_count(factored) == 784 * 80 + 80 * 96 + 96 * 30 + 30 * 48 + 48 * 10 < weight_count(wide)


def test_each_factored_kernel_is_the_best_approximation_of_its_rank():
    wide = wide_model(seed=3)
    factored = factorize(wide, (96, 48), (16, 0), dropout=0.0)
    original = kernel(wide, "dense_1")
    product = kernel(factored, "dense_1_factor") @ kernel(factored, "dense_1")
    singular = np.linalg.svd(original, compute_uv=False)
    # Eckart-Young: the truncated SVD's error is exactly the norm of the dropped singular values.
    assert np.isclose(np.linalg.norm(original - product), np.sqrt(np.sum(singular[16:] ** 2)), rtol=1e-4)
    np.testing.assert_allclose(kernel(factored, "dense_2"), kernel(wide, "dense_2"))  # rank 0: copied
    for name in ("batchnorm_1", "batchnorm_2", "probabilities", "standardize"):
        for mine, theirs in zip(factored.get_layer(name).get_weights(), wide.get_layer(name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
