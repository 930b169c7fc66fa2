"""`enable_lora`: Keras' LoRA on the locally connected layers.

The factors are ``lora_kernel_a (K, rank)``, shared by every position, and
``lora_kernel_b (P, rank, filters)``; the merged kernel is ``kernel +
(lora_alpha / rank) * a @ b[p]``. Checked against the NumPy reference applied
to that kernel.
"""

import os

import keras
import numpy as np
import pytest

from keras_localconn import LocallyConnected2D, LocallyConnected2DTranspose
from tests.autodiff import to_numpy
from tests.helpers import LOCALLY_CONNECTED, batch_shape, random_array
from tests.reference import reference_local_conv

# (rank, spatial, kernel_size, padding, data_format)
CASES = [
    (1, (9,), (3,), "causal", "channels_last"),
    (2, (6, 5), (3, 2), "same", "channels_first"),
    (2, (6, 5), (3, 3), "circular", "channels_last"),
    (3, (4, 4, 3), (2, 2, 2), "valid", "channels_last"),
]


def _case_id(case):
    rank, _, _, padding, data_format = case
    return f"{rank}d-{padding}-{data_format.split('_')[1]}"


def _value(variable):
    return to_numpy(variable.value)


def _layer(case, seed=0, **kwargs):
    rank, spatial, kernel_size, padding, data_format = case
    layer = LOCALLY_CONNECTED[rank](
        4, kernel_size, padding=padding, data_format=data_format, **kwargs
    )
    x = random_array(batch_shape(2, spatial, 3, data_format), seed)
    layer.build(x.shape)
    layer.set_weights(
        [random_array(w.shape, seed + 1 + i) for i, w in enumerate(layer.weights)]
    )
    return layer, x


def _reference(case, x, kernel, bias):
    rank, _, kernel_size, padding, data_format = case
    ones = (1,) * rank
    return reference_local_conv(
        x, kernel, kernel_size, ones, ones, padding, data_format, bias=bias
    )


def _merged(layer):
    """The kernel the factors stand for, computed here in NumPy."""
    a = _value(layer.lora_kernel_a).astype("float64")
    b = _value(layer.lora_kernel_b).astype("float64")
    delta = np.einsum("kr,prf->pkf", a, b)
    return _value(layer._kernel) + layer.lora_alpha / layer.lora_rank * delta


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_lora_starts_at_the_kernel_and_computes_with_the_merged_kernel(case):
    layer, x = _layer(case)
    before = to_numpy(layer(x))
    kernel = _value(layer._kernel)
    layer.enable_lora(2, lora_alpha=6)
    positions, patch_size, filters = kernel.shape
    assert tuple(layer.lora_kernel_a.shape) == (patch_size, 2)
    assert tuple(layer.lora_kernel_b.shape) == (positions, 2, filters)
    assert not layer._kernel.trainable
    assert sorted(w.name for w in layer.trainable_weights) == [
        "bias",
        "lora_kernel_a",
        "lora_kernel_b",
    ]
    np.testing.assert_array_equal(to_numpy(layer(x)), before)
    np.testing.assert_array_equal(to_numpy(layer.kernel), kernel)

    layer.lora_kernel_b.assign(random_array(layer.lora_kernel_b.shape, 9))
    merged = _merged(layer)  # alpha / rank = 3
    assert np.abs(merged - kernel).max() > 1
    np.testing.assert_allclose(to_numpy(layer.kernel), merged, rtol=1e-5, atol=1e-5)
    expected = _reference(case, x, merged, _value(layer.bias))
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-4)
    config = layer.get_config()
    assert (config["lora_rank"], config["lora_alpha"]) == (2, 6)


def test_lora_on_a_transposed_layer():
    layer = LocallyConnected2DTranspose(4, 3, strides=2)
    x = random_array((2, 4, 3, 3))
    layer.build(x.shape)
    before = to_numpy(layer(x))
    layer.enable_lora(1)
    np.testing.assert_array_equal(to_numpy(layer(x)), before)
    layer.lora_kernel_b.assign(random_array(layer.lora_kernel_b.shape, 2))
    np.testing.assert_allclose(
        to_numpy(layer.kernel), _merged(layer), rtol=1e-5, atol=1e-5
    )
    assert np.abs(to_numpy(layer(x)) - before).max() > 1e-3


def _model(**kwargs):
    model = keras.Sequential(
        [
            keras.Input((6, 5, 3)),
            LocallyConnected2D(4, 3, padding="same", name="local", **kwargs),
            keras.layers.Flatten(),
        ]
    )
    return model


@pytest.mark.training
def test_training_changes_only_the_lora_factors_and_the_bias():
    model = _model()
    layer = model.get_layer("local")
    layer.enable_lora(3)
    kernel, a = _value(layer._kernel), _value(layer.lora_kernel_a)
    x = random_array((8, 6, 5, 3))
    y = random_array((8, 6 * 5 * 4), 1)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    np.testing.assert_array_equal(_value(layer._kernel), kernel)
    assert np.abs(_value(layer.lora_kernel_b)).max() > 0
    assert np.abs(_value(layer.lora_kernel_a) - a).max() > 0
    assert model.evaluate(x, y, verbose=0) < before


def test_saving_stores_the_merged_kernel(tmp_path):
    model = _model(lora_rank=2)
    layer = model.get_layer("local")
    assert layer.lora_enabled  # from the constructor, at build
    layer.lora_kernel_b.assign(random_array(layer.lora_kernel_b.shape, 3))
    merged = to_numpy(layer.kernel)
    x = random_array((2, 6, 5, 3), 4)
    outputs = model.predict(x, verbose=0)
    path = os.fspath(tmp_path / "lora.keras")
    model.save(path)

    loaded = keras.models.load_model(path).get_layer("local")
    assert loaded.lora_enabled and loaded.lora_rank == 2
    np.testing.assert_allclose(_value(loaded._kernel), merged, rtol=1e-6)
    np.testing.assert_array_equal(_value(loaded.lora_kernel_b), 0)
    np.testing.assert_allclose(
        keras.models.load_model(path).predict(x, verbose=0),
        outputs,
        rtol=1e-5,
        atol=1e-5,
    )


def test_enable_lora_refuses_what_keras_refuses():
    with pytest.raises(ValueError, match="isn't yet built"):
        LocallyConnected2D(4, 3).enable_lora(2)
    constrained, _ = _layer(CASES[1], kernel_constraint="non_neg")
    with pytest.raises(ValueError, match="incompatible with kernel constraints"):
        constrained.enable_lora(2)
    layer, _ = _layer(CASES[1])
    with pytest.raises(ValueError, match=r"LocallyConnected2D '.*'.*`rank`.*0"):
        layer.enable_lora(0)
    layer.enable_lora(2)
    with pytest.raises(ValueError, match="already enabled"):
        layer.enable_lora(2)


@pytest.mark.needs_keras("3.13.0")  # quantize: Keras' quantization configs
def test_lora_and_quantization_refuse_each_other():
    layer, _ = _layer(CASES[1])
    layer.enable_lora(2)
    with pytest.raises(NotImplementedError, match="LoRA enabled cannot be quantized"):
        layer.quantize("int8")
    quantized, _ = _layer(CASES[1])
    quantized.quantize("int8")
    with pytest.raises(NotImplementedError, match="not supported on a quantized"):
        quantized.enable_lora(2)
