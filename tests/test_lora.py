"""`enable_lora`: Keras' LoRA on the locally connected layers.

The factors are ``lora_kernel_a (K, rank)``, shared by every position, and
``lora_kernel_b (P, rank, filters)``; the merged kernel is ``kernel +
(lora_alpha / rank) * a @ b[p]``. Checked against the NumPy reference applied
to that kernel; on a quantized layer (QLoRA), to the dequantized kernel plus
the delta, and to the inputs as an int8 layer quantizes them.
"""

import os
import zipfile

import keras
import numpy as np
import pytest

from keras_localconn import LocallyConnected2D, LocallyConnected2DTranspose
from tests.autodiff import gradients, to_numpy
from tests.helpers import (
    LOCALLY_CONNECTED,
    batch_shape,
    dequantized_kernel,
    quantized_inputs,
    random_array,
)
from tests.reference import reference_local_conv
from tests.reference_transpose import reference_local_conv_transpose

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
    before, after = _fit(model, learning_rate=0.1, epochs=3)
    np.testing.assert_array_equal(_value(layer._kernel), kernel)
    assert np.abs(_value(layer.lora_kernel_b)).max() > 0
    assert np.abs(_value(layer.lora_kernel_a) - a).max() > 0
    assert after < before


def _fit(model, learning_rate, epochs):
    """The loss of `model` on random data before and after `epochs` of SGD."""
    x = random_array((8, 6, 5, 3))
    y = random_array((8, 6 * 5 * 4), 1)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0)
    return before, model.evaluate(x, y, verbose=0)


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


# --------------------------------------------------------------------------
# LoRA on a quantized layer (QLoRA)
# --------------------------------------------------------------------------

WEIGHT_ONLY = "weight-only"
INT4_PER_CHANNEL = "int4-per-channel"
QUANTIZED_MODES = ["int8", WEIGHT_ONLY, "int4", INT4_PER_CHANNEL]
# A forward layer in both data formats and a transposed one:
# (name, layer class, its arguments, input shape).
QUANTIZED_LAYERS = [
    ("2d-last", LocallyConnected2D, dict(kernel_size=3, padding="same"), (6, 5, 3)),
    (
        "2d-first",
        LocallyConnected2D,
        dict(kernel_size=(3, 2), strides=(2, 1), data_format="channels_first"),
        (3, 7, 5),
    ),
    (
        "2d-transpose",
        LocallyConnected2DTranspose,
        dict(kernel_size=3, strides=2, padding="same"),
        (4, 3, 3),
    ),
]


def _stored_mode(mode):
    """The `quantization_mode` a layer of each of `QUANTIZED_MODES` has."""
    return "int8" if mode in ("int8", WEIGHT_ONLY) else "int4"


def _quantize(layer, mode):
    """`layer.quantize` for each of `QUANTIZED_MODES` (int4 is Keras' default:
    blocks of 128 rows of K, here one block with a zero point)."""
    if mode == WEIGHT_ONLY:
        config = keras.quantizers.Int8QuantizationConfig(
            weight_quantizer=None, activation_quantizer=None
        )
        layer.quantize(config=config)
    elif mode == INT4_PER_CHANNEL:
        layer.quantize(config=keras.quantizers.Int4QuantizationConfig(block_size=-1))
    else:
        layer.quantize(mode)


def _quantized_layer(layer_case, seed=0):
    """A built float layer of `layer_case` with random weights, and inputs."""
    _, cls, kwargs, input_shape = layer_case
    layer = cls(4, **kwargs)
    x = random_array((2, *input_shape), seed)
    layer.build(x.shape)
    layer.set_weights(
        [random_array(w.shape, seed + 1 + i) for i, w in enumerate(layer.weights)]
    )
    return layer, x


def _transposed(layer):
    return isinstance(layer, LocallyConnected2DTranspose)


def _layer_reference(layer, x, kernel, bias=None):
    """The NumPy reference of `layer` (stride and padding as it has them)."""
    ones = (1,) * layer.rank
    if _transposed(layer):
        return reference_local_conv_transpose(
            x,
            kernel,
            layer.kernel_size,
            layer.strides,
            ones,
            layer.padding,
            None,
            layer.data_format,
            bias=bias,
        )
    return reference_local_conv(
        x,
        kernel,
        layer.kernel_size,
        layer.strides,
        ones,
        layer.padding,
        layer.data_format,
        bias=bias,
    )


def _delta(layer, a=None, b=None):
    """``(alpha / rank) * a @ b[p]`` in NumPy, of the layer's factors unless
    given."""
    a = _value(layer.lora_kernel_a) if a is None else a
    b = _value(layer.lora_kernel_b) if b is None else b
    delta = np.einsum("kr,prf->pkf", a.astype("float64"), b.astype("float64"))
    return layer.lora_alpha / layer.lora_rank * delta


def _seen_inputs(layer, x):
    """The inputs as the quantized layer computes with them."""
    return x if layer.inputs_quantizer is None else quantized_inputs(x)


def _qlora_layer(layer_case, mode, seed=0):
    """A quantized layer with LoRA enabled after `quantize`, random B."""
    layer, x = _quantized_layer(layer_case, seed)
    _quantize(layer, mode)
    layer.enable_lora(2, lora_alpha=4)
    b = 0.3 * random_array(layer.lora_kernel_b.shape, seed + 9)
    layer.lora_kernel_b.assign(b)
    return layer, x


_qlora = pytest.mark.needs_keras("3.13.0")  # quantize: Keras' quantization configs
_modes = pytest.mark.parametrize("mode", QUANTIZED_MODES)
_layers = pytest.mark.parametrize(
    "layer_case", QUANTIZED_LAYERS, ids=[case[0] for case in QUANTIZED_LAYERS]
)


@_qlora
@_modes
@_layers
def test_enable_lora_on_a_quantized_layer_leaves_its_outputs_unchanged(
    layer_case, mode
):
    layer, x = _quantized_layer(layer_case)
    _quantize(layer, mode)
    quantized = {w.name: _value(w) for w in layer.weights}
    before = to_numpy(layer(x))
    positions, patch_size, filters = dequantized_kernel(layer, _transposed(layer)).shape
    layer.enable_lora(2)

    assert layer.lora_enabled and layer.quantization_mode == _stored_mode(mode)
    assert tuple(layer.lora_kernel_a.shape) == (patch_size, 2)
    assert tuple(layer.lora_kernel_b.shape) == (positions, 2, filters)
    assert {w.name for w in layer.trainable_weights} == {
        "bias",
        "lora_kernel_a",
        "lora_kernel_b",
    }
    assert {w.name for w in layer.non_trainable_weights} == set(quantized) - {"bias"}
    assert keras.backend.standardize_dtype(layer._kernel.dtype) == "int8"
    np.testing.assert_allclose(to_numpy(layer(x)), before, rtol=1e-5, atol=1e-5)
    # `kernel`, as Dense's: the integer values (int4: unpacked) plus the delta.
    assert tuple(layer.kernel.shape) == (positions, patch_size, filters)
    for w in layer.weights:
        if w.name in quantized:
            np.testing.assert_array_equal(_value(w), quantized[w.name])


@_qlora
@_modes
@_layers
def test_quantize_after_enable_lora_quantizes_the_base_kernel_and_keeps_lora(
    layer_case, mode
):
    layer, x = _quantized_layer(layer_case)
    float_kernel = _value(layer._kernel).astype("float64")
    layer.enable_lora(2, lora_alpha=4)
    layer.lora_kernel_a.assign(random_array(layer.lora_kernel_a.shape, 8))
    layer.lora_kernel_b.assign(random_array(layer.lora_kernel_b.shape, 9))
    a, b = _value(layer.lora_kernel_a), _value(layer.lora_kernel_b)
    _quantize(layer, mode)

    assert layer.lora_enabled and (layer.lora_rank, layer.lora_alpha) == (2, 4)
    np.testing.assert_array_equal(_value(layer.lora_kernel_a), a)
    np.testing.assert_array_equal(_value(layer.lora_kernel_b), b)
    assert [w.name for w in layer.trainable_weights] == [
        "bias",
        "lora_kernel_a",
        "lora_kernel_b",
    ]
    # The base kernel only is quantized (within a step of it), not merged
    # with the delta (2 * a @ b, several steps).
    dequantized = dequantized_kernel(layer, _transposed(layer))
    step = np.abs(float_kernel).max() / (127 if _stored_mode(mode) == "int8" else 7)
    assert np.abs(dequantized - float_kernel).max() <= step
    assert np.abs(_delta(layer)).max() > 4 * step

    expected = _layer_reference(
        layer,
        _seen_inputs(layer, x),
        dequantized + _delta(layer),
        _value(layer.bias),
    )
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-3)


def _layer_gradients(layer, x, cotangent):
    """The gradients of ``sum(cotangent * layer(x))`` w.r.t. the inputs and
    each trainable variable, by name."""
    trainable = [_value(v) for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    cotangent = keras.ops.convert_to_tensor(cotangent)

    def loss(inputs, *values):
        outputs, _ = layer.stateless_call(list(values), non_trainable, inputs)
        return keras.ops.sum(outputs * cotangent)

    grad_x, *grads = gradients(loss, x, *trainable)
    return grad_x, {v.name: g for v, g in zip(layer.trainable_variables, grads)}


@_qlora
@pytest.mark.training
@_modes
@_layers
def test_the_gradient_of_a_quantized_lora_layer_is_that_of_its_float_twin(
    layer_case, mode
):
    """The LoRA factors, the bias and the inputs take the gradients of a float
    LoRA layer whose kernel is the dequantized one, at the inputs the
    quantized layer sees; checked in NumPy too (the output is linear in each
    factor and in the inputs)."""
    layer, x = _qlora_layer(layer_case, mode)
    dequantized = dequantized_kernel(layer, _transposed(layer))
    outputs = to_numpy(layer(x))
    cotangent = random_array(outputs.shape, 5)
    grad_x, grads = _layer_gradients(layer, x, cotangent)
    assert set(grads) == {"bias", "lora_kernel_a", "lora_kernel_b"}

    twin, _ = _quantized_layer(layer_case)
    twin.enable_lora(2, lora_alpha=4)
    twin._kernel.assign(dequantized.astype("float32"))
    for name in ("bias", "lora_kernel_a", "lora_kernel_b"):
        getattr(twin, name).assign(_value(getattr(layer, name)))
    seen = _seen_inputs(layer, x).astype("float32")
    np.testing.assert_allclose(to_numpy(twin(seen)), outputs, rtol=1e-5, atol=1e-4)
    twin_grad_x, twin_grads = _layer_gradients(twin, seen, cotangent)
    np.testing.assert_allclose(grad_x, twin_grad_x, rtol=1e-5, atol=1e-4)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, twin_grads[name], rtol=1e-5, atol=1e-4)

    rng = np.random.default_rng(6)
    a, b = _value(layer.lora_kernel_a), _value(layer.lora_kernel_b)
    u, v = rng.normal(size=a.shape), rng.normal(size=b.shape)
    # The output is linear in each factor: along a direction of one, it moves
    # by the reference applied to the delta of that direction.
    for grad, direction, delta in (
        (grads["lora_kernel_a"], u, _delta(layer, a=u)),
        (grads["lora_kernel_b"], v, _delta(layer, b=v)),
    ):
        np.testing.assert_allclose(
            np.sum(grad * direction),
            np.sum(cotangent * _layer_reference(layer, seen, delta)),
            rtol=1e-4,
            atol=1e-3,
        )
    w = rng.normal(size=x.shape)
    np.testing.assert_allclose(
        np.sum(grad_x * w),
        np.sum(cotangent * _layer_reference(layer, w, dequantized + _delta(layer))),
        rtol=1e-4,
        atol=1e-3,
    )


def _qlora_model(mode, order):
    """A model whose local layer is quantized and LoRA-enabled, in `order`."""
    model = _model()
    layer = model.get_layer("local")
    layer.set_weights(
        [random_array(w.shape, 1 + i) for i, w in enumerate(layer.weights)]
    )
    if order == "lora-first":
        layer.enable_lora(2)
        _quantize(layer, mode)
    else:
        _quantize(layer, mode)
        layer.enable_lora(2)
    return model, layer


_orders = pytest.mark.parametrize("order", ["quantize-first", "lora-first"])


@_qlora
@pytest.mark.training
@_modes
def test_training_a_quantized_lora_layer_changes_only_the_factors_and_the_bias(mode):
    model, layer = _qlora_model(mode, "quantize-first")
    frozen = {w.name: _value(w) for w in layer.non_trainable_weights}
    bias, a = _value(layer.bias), _value(layer.lora_kernel_a)
    before, after = _fit(model, learning_rate=0.05, epochs=2)
    for w in layer.non_trainable_weights:
        np.testing.assert_array_equal(_value(w), frozen[w.name])
    assert keras.backend.standardize_dtype(layer._kernel.dtype) == "int8"
    assert np.abs(_value(layer.lora_kernel_b)).max() > 0
    assert np.abs(_value(layer.lora_kernel_a) - a).max() > 0
    assert np.abs(_value(layer.bias) - bias).max() > 0
    assert after < before


def _saved_arrays(path):
    """``{name: (shape, dtype)}`` of every array in a `.keras` file's weights."""
    import h5py

    arrays = {}
    with zipfile.ZipFile(path) as archive:
        with archive.open("model.weights.h5") as file, h5py.File(file) as weights:
            weights.visititems(
                lambda name, item: (
                    arrays.update({name: (item.shape, str(item.dtype))})
                    if isinstance(item, h5py.Dataset)
                    else None
                )
            )
    return arrays


@_qlora
@_orders
@_modes
def test_saving_a_quantized_lora_layer_stores_the_merged_kernel_requantized(
    mode, order, tmp_path
):
    model, layer = _qlora_model(mode, order)
    layer.lora_kernel_b.assign(0.1 * random_array(layer.lora_kernel_b.shape, 3))
    merged = dequantized_kernel(layer) + _delta(layer)
    x = random_array((2, 6, 5, 3), 4)
    outputs = model.predict(x, verbose=0)
    path = os.fspath(tmp_path / "qlora.keras")
    model.save(path)

    # The quantized variables only, in the layer's mode: no LoRA factor.
    saved = sorted(v for k, v in _saved_arrays(path).items() if "local" in k)
    shapes = {
        w.name: (tuple(w.shape), keras.backend.standardize_dtype(w.dtype))
        for w in layer.weights
        if not w.name.startswith("lora")
    }
    assert saved == sorted(shapes.values())

    loaded_model = keras.models.load_model(path)
    loaded = loaded_model.get_layer("local")
    assert loaded.lora_enabled and loaded.lora_rank == 2
    assert loaded.get_config()["lora_rank"] == 2
    assert loaded.dtype_policy.name == layer.dtype_policy.name
    np.testing.assert_array_equal(_value(loaded.lora_kernel_b), 0)
    # Requantized: within a quantization step of the merged kernel.
    error = np.abs(dequantized_kernel(loaded) - merged)
    if _stored_mode(mode) == "int8":
        step = np.abs(merged).max(axis=1, keepdims=True) / 127
    elif mode == INT4_PER_CHANNEL:
        step = np.abs(merged).max(axis=1, keepdims=True) / 7
    else:  # one block of K (zero-padded to 128 rows): its range in 15 steps,
        # and the zero point rounded too
        span = np.maximum(merged.max(axis=1, keepdims=True), 0)
        span = span - np.minimum(merged.min(axis=1, keepdims=True), 0)
        step = 2 * span / 15
    assert (error <= step / 2 + 1e-6).all()
    predictions = loaded_model.predict(x, verbose=0)
    relative = np.linalg.norm(predictions - outputs) / np.linalg.norm(outputs)
    assert relative < (0.02 if _stored_mode(mode) == "int8" else 0.1), relative
    # The loaded layer computes with what it loaded.
    expected = _layer_reference(
        loaded, _seen_inputs(loaded, x), dequantized_kernel(loaded), _value(loaded.bias)
    )
    np.testing.assert_allclose(
        predictions, expected.reshape(2, -1), rtol=1e-4, atol=1e-4
    )
