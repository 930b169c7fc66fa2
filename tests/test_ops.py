"""`keras_localconn.ops.local_conv` against independent references."""

import math

import keras
import numpy as np
import pytest

from keras_localconn.ops import (
    local_conv,
    local_conv_kernel_shape,
    local_conv_output_shape,
)
from tests.autodiff import gradients, to_numpy
from tests.helpers import (
    CONV,
    FORWARD_CASES,
    assert_gradients_equal_directional_derivatives,
    batch_shape,
    forward_case_id,
    jax_local_conv,
    random_forward_problem,
)
from tests.reference import reference_local_conv

RTOL = ATOL = 2e-5
CASES = FORWARD_CASES
# Keras' Conv layers refuse strides > 1 with dilation > 1 even on different
# axes (local_conv only refuses them on one axis): compare where both accept.
CONV_CASES = [c for c in CASES if max(c[3]) == 1 or max(c[4]) == 1]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES, ids=forward_case_id)
def test_local_conv_equals_numpy_reference(case, data_format):
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    x, kernel, out, filters = random_forward_problem(case, data_format)
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
        x, kernel, kernel_size, strides, dilation, padding, data_format
    )
    assert tuple(y.shape) == expected.shape
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CONV_CASES, ids=forward_case_id)
def test_output_shape_equals_keras_conv_output_shape(case, data_format):
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    layer = CONV[len(spatial)](
        4,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
    )
    conv_out = layer.compute_output_shape(
        batch_shape(batch, spatial, channels, data_format)
    )
    conv_spatial = conv_out[1:-1] if data_format == "channels_last" else conv_out[2:]
    ours = local_conv_output_shape(spatial, kernel_size, strides, padding, dilation)
    assert ours == tuple(conv_spatial)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "case",
    [c for c in CONV_CASES if c[5] != "causal"][::3] + [CASES[2]],
    ids=forward_case_id,
)
def test_shared_kernel_equals_keras_ops_conv(case, data_format):
    """With one kernel tiled over all positions, it is an ordinary convolution."""
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    rng = np.random.default_rng(1)
    x, _, out, filters = random_forward_problem(case, data_format)
    conv_kernel = rng.normal(size=(*kernel_size, channels, filters)).astype("float32")
    if data_format == "channels_last":
        patch_kernel = conv_kernel.reshape(-1, filters)  # (offsets..., channel)
    else:  # (channel, offsets...)
        patch_kernel = np.moveaxis(conv_kernel, -2, 0).reshape(-1, filters)
    local_kernel = np.broadcast_to(patch_kernel, (math.prod(out), *patch_kernel.shape))
    y = local_conv(
        x,
        np.ascontiguousarray(local_kernel),
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
    )
    # Keras' Conv runs channels_last (TensorFlow has no NCHW conv on CPU):
    # transpose around it for channels_first.
    layer = CONV[len(spatial)](
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format="channels_last",
        use_bias=False,
    )
    x_last = x if data_format == "channels_last" else np.moveaxis(x, 1, -1)
    layer.build(x_last.shape)
    layer.set_weights([conv_kernel])
    expected = to_numpy(layer(x_last))
    if data_format == "channels_first":
        expected = np.moveaxis(expected, -1, 1)
    np.testing.assert_allclose(to_numpy(y), to_numpy(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.backends("jax")
@pytest.mark.parametrize(
    "case", [c for c in CASES if c[5] != "causal"], ids=forward_case_id
)
def test_channels_first_kernel_equals_jax_conv_general_dilated_local(case):
    """jax's unfolded-kernel layout ("C" before the window) is channels_first's."""
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    x, kernel, out, filters = random_forward_problem(case, "channels_first")
    expected = jax_local_conv(
        x, kernel, out, kernel_size, strides, dilation, padding.upper()
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
@pytest.mark.parametrize("case", CASES[::4] + CASES[-7:], ids=forward_case_id)
def test_gradients_equal_directional_derivatives_of_reference(case, data_format):
    """The op is linear in `inputs` and in `kernel`.

    For L = sum(g * y), the gradient's inner product with any direction v is
    sum(g * reference(v)), exactly; checked on random directions for both.
    """
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    x, kernel, out, filters = random_forward_problem(case, data_format)
    rng = np.random.default_rng(7)
    expected_y = reference_local_conv(
        x, kernel, kernel_size, strides, dilation, padding, data_format
    )
    cotangent = rng.normal(size=expected_y.shape).astype("float32")
    args = dict(
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
    )

    def loss(inputs, weights):
        outputs = local_conv(inputs, weights, **args)
        return keras.ops.sum(outputs * keras.ops.convert_to_tensor(cotangent))

    grad_x, grad_kernel = gradients(loss, x, kernel)
    assert grad_x.shape == x.shape and grad_kernel.shape == kernel.shape
    ref = dict(
        kernel_size=kernel_size,
        strides=strides,
        dilation=dilation,
        padding=padding,
        data_format=data_format,
    )
    assert_gradients_equal_directional_derivatives(
        (grad_x, grad_kernel),
        x,
        kernel,
        cotangent,
        reference_local_conv,
        ref,
        rng,
        directions=3,
    )


def test_kernel_shape_is_positions_by_patch_by_filters():
    assert local_conv_kernel_shape((30, 30), (3, 3), 3, 64) == (900, 27, 64)
    assert local_conv_kernel_shape((8,), (3,), 32, 64) == (8, 96, 64)
    assert local_conv_kernel_shape((8, 8), 3, 2, np.int64(4)) == (64, 18, 4)


def test_kernel_of_wrong_shape_is_a_value_error_stating_expected_and_received():
    x = np.zeros((2, 8, 8, 3), "float32")
    kernel = np.zeros((35, 27, 4), "float32")
    with pytest.raises(ValueError, match=r"\(36, 27, filters\).*\(35, 27, 4\)"):
        local_conv(x, kernel, 3)
    with pytest.raises(ValueError, match=r"\(36, 27, filters\).*\(36, 27\)"):
        local_conv(x, np.zeros((36, 27), "float32"), 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_size=0), r"`kernel_size`.*positive.*kernel_size=0"),
        (dict(kernel_size=(3, 3, 3)), r"`kernel_size` must have 2 element"),
        (dict(kernel_size="3"), r"`kernel_size` must be an int or a tuple"),
        (dict(strides=(1, -1)), r"`strides`.*positive"),
        (dict(dilation_rate=0), r"`dilation_rate`.*positive"),
        (dict(strides=2, dilation_rate=2), r"`strides` > 1 is not compatible"),
        (
            dict(padding="full"),
            r"`padding` must be one of \('valid', 'same', 'circular'\)",
        ),
        (dict(padding="causal"), r"causal only for 1D"),
        (dict(data_format="NHWC"), r"`data_format` must be one of"),
        (dict(kernel_size=9), r"spatial dimension 0 of the output would be 0"),
    ],
)
def test_bad_arguments_are_value_errors_quoting_the_value(kwargs, message):
    args = dict(kernel_size=3)
    args.update(kwargs)
    x = np.zeros((1, 8, 8, 2), "float32")
    with pytest.raises(ValueError, match=message):
        local_conv(x, np.zeros((36, 18, 1), "float32"), **args)


def test_inputs_of_unsupported_rank_are_a_value_error():
    with pytest.raises(ValueError, match=r"rank 3, 4 or 5.*\(2, 8\)"):
        local_conv(np.zeros((2, 8), "float32"), np.zeros((1, 1, 1)), 1)


def test_padding_is_case_insensitive():
    x = np.ones((1, 4, 1), "float32")
    kernel = np.ones((4, 3, 1), "float32")
    y = local_conv(x, kernel, 3, padding="SAME")
    np.testing.assert_allclose(to_numpy(y)[0, :, 0], [2.0, 3.0, 3.0, 2.0])
    y = local_conv(x, kernel, 3, padding="Causal")
    np.testing.assert_allclose(to_numpy(y)[0, :, 0], [1.0, 2.0, 3.0, 3.0])


def test_data_format_none_follows_keras_image_data_format():
    x = np.arange(2 * 3 * 5, dtype="float32").reshape(1, 2, 3, 5)
    kernel = np.ones((15, 2, 1), "float32")
    previous = keras.config.image_data_format()
    try:
        keras.config.set_image_data_format("channels_first")
        y = local_conv(x, kernel, 1)
    finally:
        keras.config.set_image_data_format(previous)
    assert tuple(y.shape) == (1, 1, 3, 5)
    np.testing.assert_allclose(to_numpy(y)[0, 0], x[0, 0] + x[0, 1])
