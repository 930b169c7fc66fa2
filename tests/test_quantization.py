"""`quantize`: Keras' int8 quantization on the locally connected layers.

The quantized layer is checked against the NumPy reference applied to its
dequantized kernel (``int8 / scale``) and to the inputs as the layer
quantizes them (abs-max per sample), and against the float layer it came
from: relative error within 3% (int8), 2% (weight-only int8).
"""

import os
import warnings

import keras
import numpy as np
import pytest

from keras_localconn import LocallyConnected2D
from keras_localconn.layers._base import LocalBase
from keras_localconn.ops import formulation
from tests.autodiff import gradients, to_numpy
from tests.helpers import (
    LOCALLY_CONNECTED,
    LOCALLY_CONNECTED_TRANSPOSE,
    batch_shape,
    dequantized_kernel,
    quantized_inputs,
    random_array,
    unpacked_int4,
)
from tests.reference import reference_local_conv
from tests.reference_transpose import reference_local_conv_transpose

# Keras' quantization configs and int4 mode came with Keras 3.13; an older
# Keras has the layers refuse `quantize` (the test at the end).
pytestmark = pytest.mark.needs_keras("3.13.0")

WEIGHT_ONLY = "weight-only"
INT4_BLOCK = "int4-block8"
INT4_PER_CHANNEL = "int4-per-channel"
MODES = ["int8", WEIGHT_ONLY, "int4", INT4_BLOCK, INT4_PER_CHANNEL]
# Relative error of the outputs against the float layer's.
BOUNDS = {"int8": 0.03, WEIGHT_ONLY: 0.02}


def _config(mode):
    """What `quantize` takes for each of `MODES` (int4 is Keras' default:
    weight-only, blocks of 128 rows of K)."""
    if mode == WEIGHT_ONLY:
        return dict(
            config=keras.quantizers.Int8QuantizationConfig(
                weight_quantizer=None, activation_quantizer=None
            )
        )
    if mode == INT4_BLOCK:
        return dict(config=keras.quantizers.Int4QuantizationConfig(block_size=8))
    if mode == INT4_PER_CHANNEL:
        return dict(config=keras.quantizers.Int4QuantizationConfig(block_size=-1))
    return dict(mode=mode)


# (rank, spatial, kernel_size, strides, dilation, padding, data_format)
CASES = [
    (1, (9,), (3,), (1,), (1,), "causal", "channels_last"),
    (1, (8,), (3,), (2,), (1,), "circular", "channels_first"),
    (2, (6, 5), (3, 2), (1, 1), (1, 1), "same", "channels_last"),
    (2, (5, 6), (3, 3), (1, 1), (1, 2), "circular", "channels_last"),
    (2, (5, 4), (3, 3), (1, 1), (1, 1), ((1, 0), (2, 1)), "channels_first"),
    (3, (4, 5, 3), (2, 3, 2), (1, 1, 1), (1, 1, 1), "valid", "channels_last"),
    (3, (4, 4, 3), (2, 2, 2), (2, 1, 1), (1, 1, 1), "same", "channels_first"),
]


def _case_id(case):
    rank, _, _, strides, dilation, padding, data_format = case
    if not isinstance(padding, str):
        padding = "explicit"
    return (
        f"{rank}d-{padding}-s{'x'.join(map(str, strides))}"
        f"-d{'x'.join(map(str, dilation))}-{data_format.split('_')[1]}"
    )


def _layer(case, channels=3, filters=5, batch=2, seed=0, **kwargs):
    """A built layer of `case` with random weights, and random inputs."""
    rank, spatial, kernel_size, strides, dilation, padding, data_format = case
    layer = LOCALLY_CONNECTED[rank](
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        data_format=data_format,
        dilation_rate=dilation,
        **kwargs,
    )
    x = random_array(batch_shape(batch, spatial, channels, data_format), seed)
    layer.build(x.shape)
    layer.set_weights(
        [random_array(w.shape, seed + 1 + i) for i, w in enumerate(layer.weights)]
    )
    return layer, x


def _reference(case, x, kernel, bias=None):
    _, _, kernel_size, strides, dilation, padding, data_format = case
    return reference_local_conv(
        x, kernel, kernel_size, strides, dilation, padding, data_format, bias=bias
    )


def _relative_error(actual, expected):
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("mode", ["int8", WEIGHT_ONLY])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_a_quantized_layer_computes_with_its_dequantized_kernel(case, mode):
    layer, x = _layer(case)
    float_kernel = to_numpy(layer.kernel.value)
    bias = to_numpy(layer.bias.value)
    float_outputs = to_numpy(layer(x))
    layer.quantize(**_config(mode))

    assert layer.quantization_mode == "int8"
    assert layer.dtype_policy.name == "int8_from_float32"
    assert keras.backend.standardize_dtype(layer._kernel.dtype) == "int8"
    assert tuple(layer.kernel_scale.shape) == (float_kernel.shape[0], 5)
    # One scale per (position, filter): abs-max over K maps to 127.
    np.testing.assert_array_equal(
        np.abs(to_numpy(layer._kernel.value)).max(axis=1),
        np.full((len(float_kernel), 5), 127),
    )
    dequantized = dequantized_kernel(layer)
    assert np.abs(dequantized - float_kernel).max() <= np.abs(float_kernel).max() / 254

    outputs = to_numpy(layer(x))
    inputs = x if mode == WEIGHT_ONLY else quantized_inputs(x)
    expected = _reference(case, inputs, dequantized, bias)
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)
    assert _relative_error(outputs, float_outputs) < BOUNDS[mode]


@pytest.mark.parametrize("mode", ["int4", INT4_BLOCK, INT4_PER_CHANNEL])
@pytest.mark.parametrize("case", CASES[2::2], ids=_case_id)
def test_an_int4_layer_computes_with_its_dequantized_kernel(case, mode):
    layer, x = _layer(case)
    float_outputs = to_numpy(layer(x))
    float_kernel = to_numpy(layer.kernel.value)
    layer.quantize(**_config(mode))

    block = {"int4": 128, INT4_BLOCK: 8, INT4_PER_CHANNEL: -1}[mode]
    assert layer.dtype_policy.name == f"int4/{block}_from_float32"
    positions, patch_size, _ = float_kernel.shape
    # Packed along the filters: 5 filters take 3 bytes.
    assert tuple(layer._kernel.shape) == (positions, patch_size, 3)
    if block == -1:
        assert tuple(layer.kernel_scale.shape) == (positions, 5)
    else:
        blocks = -(-patch_size // block)
        assert tuple(layer.kernel_scale.shape) == (positions, blocks, 5)
        assert tuple(layer.kernel_zero.shape) == (positions, blocks, 5)
    np.testing.assert_array_equal(
        to_numpy(layer.kernel), unpacked_int4(to_numpy(layer._kernel.value), 5)
    )
    dequantized = dequantized_kernel(layer)
    outputs = to_numpy(layer(x))
    expected = _reference(case, x, dequantized, to_numpy(layer.bias.value))
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)
    assert _relative_error(outputs, float_outputs) < 0.25


# (rank, spatial, kernel_size, strides, padding, data_format) of a transposed
# layer, and the reference's output_padding (None: Keras' default).
TRANSPOSE_CASES = [
    (1, (5,), (3,), (2,), "same", "channels_last"),
    (2, (4, 3), (3, 2), (2, 1), "valid", "channels_first"),
    (3, (3, 2, 2), (2, 2, 2), (1, 2, 1), "same", "channels_last"),
]


def _transposed_layer(case):
    """A float transposed layer with random weights, its inputs and the
    reference's arguments."""
    rank, spatial, kernel_size, strides, padding, data_format = case
    layer = LOCALLY_CONNECTED_TRANSPOSE[rank](
        5, kernel_size, strides=strides, padding=padding, data_format=data_format
    )
    x = random_array(batch_shape(2, spatial, 4, data_format))
    layer.build(x.shape)
    layer.set_weights(
        [random_array(w.shape, 1 + i) for i, w in enumerate(layer.weights)]
    )
    # (kernel_size, strides, dilation, padding, output_padding, data_format)
    reference_arguments = (
        kernel_size,
        strides,
        (1,) * rank,
        padding,
        None,
        data_format,
    )
    return layer, x, reference_arguments


@pytest.mark.parametrize("mode", ["int8", WEIGHT_ONLY, INT4_BLOCK])
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda case: f"{case[0]}d")
def test_a_quantized_transposed_layer_computes_with_its_dequantized_kernel(case, mode):
    layer, x, reference_arguments = _transposed_layer(case)
    float_outputs = to_numpy(layer(x))
    positions, rows, channels = layer.kernel.shape
    layer.quantize(**_config(mode))
    if mode == INT4_BLOCK:
        assert tuple(layer._kernel.shape) == (positions, (rows + 1) // 2, channels)
        assert tuple(layer.kernel_scale.shape) == (positions, rows, 1)
    else:
        assert tuple(layer.kernel_scale.shape) == (positions, rows)
    inputs = quantized_inputs(x) if mode == "int8" else x
    expected = reference_local_conv_transpose(
        inputs,
        dequantized_kernel(layer, transposed=True),
        *reference_arguments,
        bias=to_numpy(layer.bias.value),
    )
    outputs = to_numpy(layer(x))
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)
    bound = {"int8": 0.03, WEIGHT_ONLY: 0.02, INT4_BLOCK: 0.25}[mode]
    assert _relative_error(outputs, float_outputs) < bound


@pytest.mark.training
@pytest.mark.parametrize("mode", ["int8", WEIGHT_ONLY, INT4_BLOCK])
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda case: f"{case[0]}d")
def test_the_gradient_reaches_a_quantized_transposed_layers_inputs(case, mode):
    """That of the float layer whose kernel is the dequantized one."""
    layer, x, reference_arguments = _transposed_layer(case)
    layer.quantize(**_config(mode))
    cotangent = random_array(tuple(layer(x).shape), 7)

    def loss(inputs):
        return keras.ops.sum(layer(inputs) * keras.ops.convert_to_tensor(cotangent))

    (grad_inputs,) = gradients(loss, x)
    v = np.random.default_rng(8).normal(size=x.shape)
    directional = reference_local_conv_transpose(
        v, dequantized_kernel(layer, transposed=True), *reference_arguments
    )
    np.testing.assert_allclose(
        np.sum(grad_inputs * v), np.sum(cotangent * directional), rtol=1e-4, atol=1e-3
    )


# The engine pinned to two positions at a time: the kernel decoded chunk by
# chunk, under the chunked path's own gradient.
_CHUNKED = dict(chunk=2, batch_before_channels=True, loop_by_map=False, group=2)


@pytest.mark.training
@pytest.mark.parametrize("chunked", [False, True], ids=["layer", "chunked"])
@pytest.mark.parametrize("mode", ["int8", WEIGHT_ONLY, INT4_BLOCK])
def test_the_gradient_reaches_the_inputs_through_the_dequantized_kernel(mode, chunked):
    """The kernel takes no gradient; the inputs take that of the float layer
    whose kernel is the dequantized one (the input quantization passes the
    gradient straight through, as Keras' Dense does)."""
    case = CASES[3] if not chunked else CASES[2]
    layer, x = _layer(case)
    layer.quantize(**_config(mode))
    dequantized = dequantized_kernel(layer)
    with formulation(**(_CHUNKED if chunked else {})):
        outputs = to_numpy(layer(x))
        cotangent = random_array(outputs.shape, 7)

        def loss(inputs):
            outputs = layer(inputs) * keras.ops.convert_to_tensor(cotangent)
            return keras.ops.sum(outputs)

        (grad_inputs,) = gradients(loss, x)
    v = np.random.default_rng(8).normal(size=x.shape)
    np.testing.assert_allclose(
        np.sum(grad_inputs * v),
        np.sum(cotangent * _reference(case, v, dequantized)),
        rtol=1e-4,
        atol=1e-3,
    )
    assert [w.name for w in layer.trainable_weights] == ["bias"]


def _model(channels=3, spatial=(6, 5), filters=4):
    model = keras.Sequential(
        [
            keras.Input((*spatial, channels)),
            LocallyConnected2D(filters, 3, padding="same", name="local"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, name="dense"),
        ]
    )
    for i, w in enumerate(model.weights):
        fan_in = w.shape[-2] if len(w.shape) > 1 else 1
        w.assign(random_array(w.shape, i) / np.sqrt(fan_in))
    return model


def test_model_quantize_quantizes_the_local_and_the_dense_layers():
    model = _model()
    x = random_array((3, 6, 5, 3), 9)
    float_outputs = model.predict(x, verbose=0)
    model.quantize("int8")
    for name in ("local", "dense"):
        layer = model.get_layer(name)
        assert layer.quantization_mode == "int8", name
        assert keras.backend.standardize_dtype(layer._kernel.dtype) == "int8", name
    outputs = model.predict(x, verbose=0)
    assert _relative_error(outputs, float_outputs) < 0.03


@pytest.mark.parametrize("mode", ["int8", WEIGHT_ONLY, "int4"])
def test_a_quantized_model_saves_and_loads_its_quantized_variables(
    mode, tmp_path, monkeypatch
):
    model = _model(channels=16, spatial=(16, 16), filters=16)
    float_path = os.fspath(tmp_path / "float.keras")
    model.save(float_path)
    model.quantize(**_config(mode))
    x = random_array((2, 16, 16, 16), 4)
    outputs = model.predict(x, verbose=0)
    path = os.fspath(tmp_path / "int8.keras")
    model.save(path)

    def no_float_kernel(self, *args):
        raise AssertionError(f"{self.name}: a float kernel allocated on load")

    monkeypatch.setattr(LocalBase, "_float_kernel", no_float_kernel)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("local")
    if mode == "int4":
        assert layer.dtype_policy.name == "int4/128_from_float32"
        assert layer.inputs_quantizer is None
        assert tuple(layer.kernel_zero.shape) == (256, 2, 16)  # 144 rows of K
        np.testing.assert_allclose(loaded.predict(x, verbose=0), outputs, atol=1e-6)
        assert os.path.getsize(path) <= 0.2 * os.path.getsize(float_path)
        return
    assert layer.quantization_mode == "int8"
    assert {
        w.name: keras.backend.standardize_dtype(w.dtype) for w in layer.weights
    } == {
        "kernel": "int8",
        "kernel_scale": "float32",
        "bias": "float32",
    }
    # Weight-only stays weight-only.
    assert (layer.inputs_quantizer is None) == (mode == WEIGHT_ONLY)
    np.testing.assert_array_equal(
        to_numpy(layer._kernel.value), to_numpy(model.get_layer("local")._kernel.value)
    )
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), outputs, rtol=1e-5, atol=1e-6
    )
    assert os.path.getsize(path) <= 0.3 * os.path.getsize(float_path)


def test_quantize_refuses_what_keras_refuses():
    case = CASES[2]
    unbuilt = LocallyConnected2D(4, 3)
    with pytest.raises(ValueError, match="isn't yet built"):
        unbuilt.quantize("int8")
    layer, _ = _layer(case)
    layer.quantize("int8")
    with pytest.raises(ValueError, match="already quantized"):
        layer.quantize("int8")
    half, _ = _layer(case, dtype="float16")
    with pytest.raises(ValueError, match="float16"):
        half.quantize("int8")


def test_quantize_refuses_a_subclass_by_type_as_dense_does():
    class Custom(LocallyConnected2D):  # may compute otherwise than its base
        pass

    layer = Custom(4, 3)
    layer.build((None, 6, 5, 3))
    with pytest.raises(NotImplementedError, match="Custom"):
        layer.quantize("int8")
    assert layer.quantization_mode is None
    layer.quantize("int8", type_check=False)
    assert layer.quantization_mode == "int8"


@pytest.mark.parametrize("mode", ["float8", "gptq"])
def test_unsupported_modes_are_refused_naming_the_supported_ones(mode):
    layer, _ = _layer(CASES[2])
    if mode == "gptq":  # Keras asks for a GPTQConfig
        arguments = dict(config=keras.quantizers.GPTQConfig(["text"], None))
    else:
        arguments = dict(mode=mode)
    supported = r"LocallyConnected2D '.*'.*\('int8', 'int4'\)"
    with pytest.raises(NotImplementedError, match=supported):
        layer.quantize(**arguments)
    assert layer.quantization_mode is None


def test_model_quantize_goes_on_past_a_mode_the_local_layer_refuses():
    model = _model()
    x = random_array((2, 6, 5, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.quantize("float8")
    assert any("'float8' is not supported" in str(w.message) for w in caught)
    assert model.get_layer("dense").quantization_mode == "float8"
    assert model.get_layer("local").quantization_mode is None
    assert np.isfinite(model.predict(x, verbose=0)).all()


def test_int8_under_mixed_bfloat16():
    layer, x = _layer(CASES[2], dtype="mixed_bfloat16")
    float_outputs = to_numpy(keras.ops.cast(layer(x), "float32"))
    layer.quantize("int8")
    assert layer.dtype_policy.name == "int8_from_mixed_bfloat16"
    outputs = layer(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"
    outputs = to_numpy(keras.ops.cast(outputs, "float32"))
    assert _relative_error(outputs, float_outputs) < 0.04


def test_a_quantized_layer_is_not_converted():
    """`to_conv` would average, and `untie` copy, integer values."""
    from keras_localconn import to_conv, untie

    layer = LocallyConnected2D(3, 2, position_groups=2, name="q")
    layer.build((None, 5, 5, 2))
    layer.quantize("int8")
    for convert in (to_conv, untie):
        with pytest.raises(ValueError, match=r"'q' is quantized.*'int8'.*then"):
            convert(layer)


@pytest.mark.parametrize("mode", ["int8", "lora"])
def test_a_quantized_or_lora_kernel_is_sharded_over_its_positions(mode):
    from keras.distribution import DeviceMesh

    from keras_localconn.distribution import positions_layout_map

    model = keras.Sequential(
        [keras.Input((6, 5, 2)), LocallyConnected2D(3, 2, name="lc")], name="net"
    )  # 20 positions
    if mode == "lora":
        model.get_layer("lc").enable_lora(2)
    else:
        model.quantize(mode)
    mesh = DeviceMesh((4,), ("model",), [f"device{i}" for i in range(4)])
    layout_map = positions_layout_map(mesh, model, axis_name="model")
    assert layout_map["net/lc/kernel"].axes == ("model", None, None)
