"""Circular and explicit zero padding: `local_conv`, the shape helpers, the layers.

Every family (rank, strides, dilation, data format, each way of writing
explicit padding) is checked against the loop-based NumPy reference, which
wraps coordinates or reads zeros by itself; `keras.layers.ZeroPadding*D`,
`numpy.pad(mode="wrap")` and jax's own local convolution are second oracles.
"""

import json
import math

import keras
import numpy as np
import pytest

from keras_localconn import LocallyConnected1D, LocallyConnected2D, LocallyConnected3D
from keras_localconn.ops import local_conv, local_conv_output_shape, local_conv_padding
from tests.autodiff import gradients, to_numpy
from tests.helpers import (
    LOCALLY_CONNECTED,
    PADDING_CASES,
    assert_gradients_equal_directional_derivatives,
    batch_shape,
    jax_local_conv,
    padding_case_id,
)
from tests.reference import (
    reference_local_conv,
    reference_output_shape,
    reference_padding,
)

RTOL = ATOL = 2e-5
ZERO_PADDING = {
    1: keras.layers.ZeroPadding1D,
    2: keras.layers.ZeroPadding2D,
    3: keras.layers.ZeroPadding3D,
}

# (spatial, channels, kernel_size, strides, dilation, padding as the user
# writes it, the same padding as the reference takes it: a name or pairs).
CASES = PADDING_CASES
EXPLICIT = [c for c in CASES if not isinstance(c[5], str)]
CIRCULAR = [c for c in CASES if isinstance(c[5], str)]


def _random_problem(case, data_format, batch=2, filters=3, seed=0):
    spatial, channels, kernel_size, strides, dilation, _, ref_padding = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=batch_shape(batch, spatial, channels, data_format))
    out = reference_output_shape(spatial, kernel_size, strides, dilation, ref_padding)
    kernel = rng.normal(
        size=(math.prod(out), math.prod(kernel_size) * channels, filters)
    )
    bias = rng.normal(size=(*out, filters))
    return x.astype("float32"), kernel.astype("float32"), bias.astype("float32")


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES, ids=padding_case_id)
def test_local_conv_with_circular_or_explicit_padding_equals_numpy_reference(
    case, data_format
):
    spatial, channels, kernel_size, strides, dilation, padding, ref_padding = case
    x, kernel, _ = _random_problem(case, data_format)
    y = local_conv(
        x,
        kernel,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
    )
    expected = reference_local_conv(
        x, kernel, kernel_size, strides, dilation, ref_padding, data_format
    )
    assert tuple(y.shape) == expected.shape
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=padding_case_id)
def test_shape_helpers_give_the_reference_padding_and_output_shape(case):
    spatial, channels, kernel_size, strides, dilation, padding, ref_padding = case
    args = (spatial, kernel_size, strides, padding, dilation)
    expected_pads = reference_padding(
        spatial, kernel_size, strides, dilation, ref_padding
    )
    assert local_conv_padding(*args) == tuple(expected_pads)
    assert local_conv_output_shape(*args) == reference_output_shape(
        spatial, kernel_size, strides, dilation, ref_padding
    )


@pytest.mark.parametrize("case", CIRCULAR, ids=padding_case_id)
def test_circular_padding_takes_the_amounts_of_same(case):
    spatial, channels, kernel_size, strides, dilation, padding, _ = case
    same = (spatial, kernel_size, strides, "same", dilation)
    circular = (spatial, kernel_size, strides, padding, dilation)
    assert local_conv_padding(*circular) == local_conv_padding(*same)
    assert local_conv_output_shape(*circular) == tuple(
        -(-n // s) for n, s in zip(spatial, strides)
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CIRCULAR[::2], ids=padding_case_id)
def test_circular_padding_equals_numpy_wrap_padding_then_valid(case, data_format):
    spatial, channels, kernel_size, strides, dilation, padding, _ = case
    x, kernel, _ = _random_problem(case, data_format)
    pads = local_conv_padding(spatial, kernel_size, strides, padding, dilation)
    spatial_axes = (
        range(1, len(spatial) + 1)
        if data_format == "channels_last"
        else range(2, len(spatial) + 2)
    )
    widths = [(0, 0)] * x.ndim
    for axis, pair in zip(spatial_axes, pads):
        widths[axis] = pair
    wrapped = np.pad(x, widths, mode="wrap")
    args = dict(strides=strides, dilation_rate=dilation, data_format=data_format)
    y = local_conv(x, kernel, kernel_size, padding=padding, **args)
    expected = local_conv(wrapped, kernel, kernel_size, padding="valid", **args)
    np.testing.assert_allclose(to_numpy(y), to_numpy(expected), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", EXPLICIT, ids=padding_case_id)
def test_explicit_padding_equals_keras_zero_padding_layer_then_valid(case, data_format):
    """The same `padding` value means the same thing to ZeroPadding*D.

    ZeroPadding1D takes an int or one (before, after) pair, and pads axis 1
    only: the 1D cases hand it their pair, transposed around it for
    channels_first.
    """
    spatial, channels, kernel_size, strides, dilation, padding, ref_padding = case
    x, kernel, _ = _random_problem(case, data_format)
    if len(spatial) == 1:
        x_last = x if data_format == "channels_last" else np.moveaxis(x, 1, -1)
        padded = to_numpy(keras.layers.ZeroPadding1D(ref_padding[0])(x_last))
        if data_format == "channels_first":
            padded = np.moveaxis(padded, -1, 1)
    else:
        zero_padding = ZERO_PADDING[len(spatial)](padding, data_format=data_format)
        padded = to_numpy(zero_padding(x))
    args = dict(strides=strides, dilation_rate=dilation, data_format=data_format)
    y = local_conv(x, kernel, kernel_size, padding=padding, **args)
    expected = local_conv(padded, kernel, kernel_size, padding="valid", **args)
    np.testing.assert_allclose(to_numpy(y), to_numpy(expected), rtol=RTOL, atol=ATOL)


@pytest.mark.backends("jax")
@pytest.mark.parametrize("case", EXPLICIT, ids=padding_case_id)
def test_explicit_padding_equals_jax_conv_general_dilated_local(case):
    spatial, channels, kernel_size, strides, dilation, padding, ref_padding = case
    x, kernel, _ = _random_problem(case, "channels_first")
    out = reference_output_shape(spatial, kernel_size, strides, dilation, ref_padding)
    expected = jax_local_conv(
        x, kernel, out, kernel_size, strides, dilation, ref_padding
    )
    y = local_conv(
        x,
        kernel,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format="channels_first",
    )
    np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.training
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES[::3], ids=padding_case_id)
def test_gradients_through_circular_and_explicit_padding_match_reference(
    case, data_format
):
    """L = sum(g * y) is linear in x: <dL/dx, v> = sum(g * reference(v))."""
    spatial, channels, kernel_size, strides, dilation, padding, ref_padding = case
    x, kernel, _ = _random_problem(case, data_format)
    rng = np.random.default_rng(3)
    ref = dict(
        kernel_size=kernel_size,
        strides=strides,
        dilation=dilation,
        padding=ref_padding,
        data_format=data_format,
    )
    cotangent = rng.normal(size=reference_local_conv(x, kernel, **ref).shape)

    def loss(inputs, weights):
        outputs = local_conv(
            inputs,
            weights,
            kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=dilation,
            data_format=data_format,
        )
        return keras.ops.sum(
            outputs * keras.ops.convert_to_tensor(cotangent, "float32")
        )

    grads = gradients(loss, x, kernel)
    assert_gradients_equal_directional_derivatives(
        grads, x, kernel, cotangent, reference_local_conv, ref, rng
    )


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "rank, padding, expected",
    [
        (2, 3, ((3, 3), (3, 3))),
        (2, (1, 2), ((1, 1), (2, 2))),
        (2, [[1, 0], [0, 2]], ((1, 0), (0, 2))),  # a JSON config's lists
        (2, (np.int64(1), (2, np.int32(0))), ((1, 1), (2, 0))),
        (1, (4, 0), ((4, 0),)),  # ZeroPadding1D: (before, after)
        (1, (2,), ((2, 2),)),
        (1, [[0, 1]], ((0, 1),)),
        (3, 0, ((0, 0),) * 3),
        (2, "Circular", "circular"),
        (1, "circular", "circular"),
    ],
)
def test_padding_is_normalised_to_a_name_or_before_after_pairs(rank, padding, expected):
    layer = LOCALLY_CONNECTED[rank](2, 1, padding=padding)
    assert layer.padding == expected
    assert layer.get_config()["padding"] == expected


@pytest.mark.parametrize(
    "rank, padding, message",
    [
        (2, -1, r"negative padding would crop.*padding=-1"),
        (2, ((1, -2), (0, 0)), r"negative padding would crop"),
        (2, (1, 2, 3), r"one entry per spatial dimension, 3 given"),
        (1, (1, 2, 3), r"one entry per spatial dimension, 3 given"),
        (2, ((1, 2, 3), (0, 0)), r"neither an int nor a pair of ints"),
        (2, (1.5, 1), r"neither an int nor a pair of ints.*padding=\(1.5, 1\)"),
        (2, True, r"got a bool"),
        (2, None, r"got a NoneType"),
        (2, "wrap", r"one of \('valid', 'same', 'circular'\).*padding='wrap'"),
        (3, "causal", r"causal only for 1D"),
    ],
)
def test_bad_padding_is_a_value_error_quoting_it_and_saying_what_is_allowed(
    rank, padding, message
):
    with pytest.raises(ValueError, match=message):
        LOCALLY_CONNECTED[rank](2, 1, padding=padding)
    x = np.zeros((1, *(4,) * rank, 1), "float32")
    with pytest.raises(ValueError, match=message):
        local_conv(x, np.zeros((4**rank, 1, 1), "float32"), 1, padding=padding)


def test_input_too_small_even_with_explicit_padding_quotes_the_padding():
    x = np.zeros((1, 3, 3, 1), "float32")
    with pytest.raises(ValueError, match=r"output would be 0.*padding \(\(1, 0\)"):
        local_conv(x, np.zeros((1, 25, 1), "float32"), 5, padding=((1, 0), (1, 1)))


def test_kernel_shape_error_quotes_the_padding_received():
    x = np.zeros((1, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match=r"padding=1, .*output shape \(4, 4\)"):
        local_conv(x, np.zeros((1, 9, 1), "float32"), 3, padding=1)


# --------------------------------------------------------------------- layers


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "case",
    [CASES[1], CASES[7], CASES[12], CASES[17], CASES[21], CASES[22]],
    ids=padding_case_id,
)
def test_layer_with_circular_or_explicit_padding_equals_reference_with_bias(
    case, data_format
):
    spatial, channels, kernel_size, strides, dilation, padding, ref_padding = case
    x, kernel, bias = _random_problem(case, data_format)
    layer = LOCALLY_CONNECTED[len(spatial)](
        kernel.shape[-1],
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
    )
    layer.build(x.shape)
    layer.set_weights([kernel, bias])
    expected = reference_local_conv(
        x, kernel, kernel_size, strides, dilation, ref_padding, data_format, bias
    )
    assert layer.compute_output_shape(x.shape) == expected.shape
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "layer",
    [
        LocallyConnected1D(2, 3, padding=(0, 2)),
        LocallyConnected2D(
            2, 3, padding=((1, 0), (2, 1)), data_format="channels_first"
        ),
        LocallyConnected3D(2, 2, padding="circular", strides=2),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_padding_survives_get_config_through_json(layer):
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(layer)
    assert restored.padding == layer.padding
    assert restored.get_config() == layer.get_config()


def test_model_with_circular_and_explicit_padding_round_trips_through_keras_file(
    tmp_path,
):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((9, 8, 2))
    x = LocallyConnected2D(3, 3, padding="circular", strides=(2, 1))(inputs)
    x = LocallyConnected2D(2, (2, 3), padding=((1, 0), 2), dilation_rate=(1, 2))(x)
    x = keras.layers.Reshape((-1, 2))(x)
    outputs = LocallyConnected1D(2, 3, padding=(2, 0))(x)
    model = keras.Model(inputs, outputs)
    data = np.random.default_rng(0).normal(size=(2, 9, 8, 2)).astype("float32")
    path = tmp_path / "padding.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.layers[2].padding == ((1, 0), (2, 2))
    assert loaded.layers[1].padding == "circular"
    np.testing.assert_allclose(
        loaded.predict(data, verbose=0), model.predict(data, verbose=0), atol=1e-6
    )
