"""`keras_localconn.ops.local_conv_transpose`: the adjoint of `local_conv`."""

import math

import keras
import numpy as np
import pytest

from keras_localconn import _schedule, _shapes
from keras_localconn.ops import formulation, local_conv, local_conv_transpose
from tests.autodiff import gradients, to_numpy
from tests.helpers import (
    CONV_TRANSPOSE,
    assert_gradients_equal_directional_derivatives,
    batch_shape,
    geometry_id,
)
from tests.reference_transpose import (
    reference_local_conv_transpose,
    reference_transpose_length,
    reference_transpose_start,
)

RTOL = ATOL = 2e-5
FILTERS = 3
# The scatter-add formulation needs keras.ops.scatter_update(reduction=...),
# which older Keras releases lack; there only the gather-sum one exists.
FORMULATIONS = [
    *([pytest.param(True, id="scatter-add")] if _schedule.HAS_SCATTER_ADD else []),
    pytest.param(False, id="gather-sum"),
]


def _random_cases(count, seed):
    """(spatial, channels, kernel, strides, dilation, padding, output_padding)."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        rank = int(rng.integers(1, 4))
        spatial = tuple(int(n) for n in rng.integers(1, {1: 7, 2: 5, 3: 4}[rank], rank))
        kernel = tuple(int(k) for k in rng.integers(1, 4, rank))
        strides = tuple(int(s) for s in rng.integers(1, 4, rank))
        dilation = tuple(1 if s > 1 else int(rng.integers(1, 3)) for s in strides)
        padding = str(rng.choice(["valid", "same"]))
        output_padding = None
        if rng.random() < 0.5:
            output_padding = tuple(int(rng.integers(0, s)) for s in strides)
        lengths = [
            reference_transpose_length(n, k, s, d, padding, op)
            for n, k, s, d, op in zip(
                spatial,
                kernel,
                strides,
                dilation,
                output_padding or (None,) * rank,
            )
        ]
        if min(lengths) <= 0:
            continue
        channels = int(rng.integers(1, 4))
        cases.append(
            (spatial, channels, kernel, strides, dilation, padding, output_padding)
        )
    return cases


def _fixed_cases():
    """Corners the random draw may miss."""
    return [
        ((5,), 2, (3,), (1,), (1,), "valid", None),
        ((4,), 2, (1,), (3,), (1,), "same", None),  # stride > kernel: gaps
        ((4,), 1, (2,), (3,), (1,), "valid", None),  # default output_padding 1
        ((3,), 2, (4,), (2,), (1,), "same", (1,)),
        ((3,), 2, (3,), (1,), (2,), "same", None),  # dilation
        ((3, 4), 2, (3, 2), (2, 1), (1, 1), "same", None),
        ((3, 2), 3, (2, 3), (2, 2), (1, 1), "valid", (1, 0)),
        ((4, 3), 1, (3, 3), (1, 1), (1, 2), "valid", None),
        ((2, 3, 2), 2, (2, 3, 2), (1, 2, 2), (1, 1, 1), "same", (0, 1, 0)),
        ((1, 1), 4, (1, 1), (1, 1), (1, 1), "valid", None),
        ((2, 2, 2), 1, (3, 1, 2), (2, 1, 1), (1, 1, 2), "valid", None),
    ]


CASES = _fixed_cases() + _random_cases(13, seed=12)
# Keras' Conv*DTranspose refuses strides > 1 with dilation > 1 even on
# different axes (this op only refuses them on one axis).
KERAS_CASES = [c for c in CASES if max(c[3]) == 1 or max(c[4]) == 1]


def _keras_marks(case):
    """Keras' Conv*DTranspose refuses a zero in `output_padding` before 3.11."""
    output_padding = case[6]
    if output_padding is not None and 0 in output_padding:
        return [pytest.mark.needs_keras("3.11.0")]
    return []


def _case_id(case):
    *geometry, output_padding = case
    if output_padding is None:
        return geometry_id(*geometry)
    return f"{geometry_id(*geometry)}-op{'x'.join(map(str, output_padding))}"


def _arguments(case, data_format):
    spatial, channels, kernel, strides, dilation, padding, output_padding = case
    return dict(
        kernel_size=kernel,
        strides=strides,
        padding=padding,
        output_padding=output_padding,
        dilation_rate=dilation,
        data_format=data_format,
    )


def _reference_arguments(case, data_format):
    spatial, channels, kernel, strides, dilation, padding, output_padding = case
    return dict(
        kernel_size=kernel,
        strides=strides,
        dilation=dilation,
        padding=padding,
        output_padding=output_padding,
        data_format=data_format,
    )


def _random_problem(case, data_format, batch=2, seed=0):
    """Inputs y and a kernel (P, K, C) for the transposed op."""
    spatial, channels, kernel_size, *_ = case
    rng = np.random.default_rng(seed)
    y = rng.normal(size=batch_shape(batch, spatial, channels, data_format))
    y = y.astype("float32")
    kernel = rng.normal(
        size=(math.prod(spatial), math.prod(kernel_size) * FILTERS, channels)
    ).astype("float32")
    return y, kernel


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_local_conv_transpose_equals_numpy_reference(case, data_format):
    y, kernel = _random_problem(case, data_format)
    x = local_conv_transpose(y, kernel, **_arguments(case, data_format))
    expected = reference_local_conv_transpose(
        y, kernel, **_reference_arguments(case, data_format)
    )
    assert tuple(x.shape) == expected.shape
    np.testing.assert_allclose(to_numpy(x), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scatter_add", FORMULATIONS)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES[::3], ids=_case_id)
def test_both_formulations_equal_numpy_reference(case, data_format, scatter_add):
    """The scatter-add and the gather-then-sum (Keras < 3.14) agree."""
    y, kernel = _random_problem(case, data_format)
    with formulation(scatter_add=scatter_add):
        x = local_conv_transpose(y, kernel, **_arguments(case, data_format))
    expected = reference_local_conv_transpose(
        y, kernel, **_reference_arguments(case, data_format)
    )
    np.testing.assert_allclose(to_numpy(x), expected, rtol=RTOL, atol=ATOL)


def _forward_pads(case):
    """Per-axis (before, after) pads of the forward op that this one inverts.

    From the reference's window placement: window 0 starts at `start`, the
    last one ends at ``(n - 1) * s + start + extent``; negative means crop.
    """
    spatial, channels, kernel, strides, dilation, padding, output_padding = case
    pads = []
    for axis, (n, k, s, d) in enumerate(zip(spatial, kernel, strides, dilation)):
        op = None if output_padding is None else output_padding[axis]
        length = reference_transpose_length(n, k, s, d, padding, op)
        start = reference_transpose_start(n, length, k, s, d, padding)
        end = (n - 1) * s + start + (k - 1) * d + 1
        pads.append((-start, end - length))
    return pads


def _pad_or_crop(x, pads, data_format):
    """Zero-pads (or crops, for negative pads) the spatial axes of `x`."""
    spatial_axes = range(1, x.ndim - 1) if data_format == "channels_last" else None
    if spatial_axes is None:
        spatial_axes = range(2, x.ndim)
    widths = [(0, 0)] * x.ndim
    for axis, (before, after) in zip(spatial_axes, pads):
        widths[axis] = (max(before, 0), max(after, 0))
    x = np.pad(x, widths)
    index = [slice(None)] * x.ndim
    for axis, (before, after) in zip(spatial_axes, pads):
        index[axis] = slice(max(-before, 0), x.shape[axis] - max(-after, 0))
    return x[tuple(index)]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_adjoint_identity_with_local_conv(case, data_format):
    """<local_conv_transpose(y), x> == <y, local_conv(x)> for random x and y.

    `local_conv` takes padding by name: the forward op here is ``valid`` on
    `x` padded (or cropped) by the pads that the reference's window placement
    implies, so this checks the adjoint through the public forward op.
    """
    kernel_size, strides, dilation = case[2], case[3], case[4]
    y, kernel = _random_problem(case, data_format)
    transposed = to_numpy(
        local_conv_transpose(y, kernel, **_arguments(case, data_format))
    )
    x = np.random.default_rng(3).normal(size=transposed.shape).astype("float32")
    padded = _pad_or_crop(x, _forward_pads(case), data_format)
    forward = to_numpy(
        local_conv(
            padded,
            kernel,
            kernel_size,
            strides=strides,
            dilation_rate=dilation,
            data_format=data_format,
        )
    )
    assert forward.shape == y.shape
    lhs = float(np.sum(transposed.astype(np.float64) * x))
    rhs = float(np.sum(y.astype(np.float64) * forward))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-3)


@pytest.mark.training
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", [c for c in CASES if c[6] is None][::2], ids=_case_id)
def test_equals_vector_jacobian_product_of_local_conv(case, data_format):
    """The issue's definition, with the forward op's own autodiff.

    Without `output_padding`, the forward op is `local_conv` with the same
    named `padding` over the transposed output's shape.
    """
    spatial, channels, kernel_size, strides, dilation, padding, _ = case
    y, kernel = _random_problem(case, data_format)
    transposed = to_numpy(
        local_conv_transpose(y, kernel, **_arguments(case, data_format))
    )
    x = np.zeros(transposed.shape, "float32")

    def pairing(inputs):
        outputs = local_conv(
            inputs,
            kernel,
            kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=dilation,
            data_format=data_format,
        )
        return keras.ops.sum(outputs * keras.ops.convert_to_tensor(y))

    (vjp,) = gradients(pairing, x)
    np.testing.assert_allclose(transposed, vjp, rtol=1e-4, atol=1e-4)


def _conv_transpose_layer(case, data_format="channels_last", filters=FILTERS):
    spatial, channels, kernel_size, strides, dilation, padding, output_padding = case
    return CONV_TRANSPOSE[len(spatial)](
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        output_padding=output_padding,
        dilation_rate=dilation,
        data_format=data_format,
        use_bias=False,
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=_keras_marks(c)) for c in KERAS_CASES], ids=_case_id
)
def test_output_shape_equals_keras_conv_transpose(case, data_format):
    spatial, channels = case[0], case[1]
    layer = _conv_transpose_layer(case, data_format)
    shape = batch_shape(2, spatial, channels, data_format)
    y, kernel = _random_problem(case, data_format)
    ours = local_conv_transpose(y, kernel, **_arguments(case, data_format))
    assert tuple(ours.shape) == tuple(layer.compute_output_shape(shape))


def _tensorflow_refuses(case):
    """Why Keras' Conv*DTranspose cannot run `case` on TensorFlow, or None."""
    spatial, channels, kernel, strides, dilation, padding, output_padding = case
    if max(dilation) > 1:
        return "TensorFlow has no dilated transposed convolution on the CPU"
    if padding == "same" and output_padding is not None:
        for n, k, s, op in zip(spatial, kernel, strides, output_padding):
            length = reference_transpose_length(n, k, s, 1, padding, op)
            if -(-length // s) != n:
                # TensorFlow pads "same" as the forward conv over the output
                # would, which has another number of windows here.
                return "TensorFlow's conv_transpose refuses this output_padding"
    return None


# The cases TensorFlow's CPU kernels refuse run under the other backends only.
CONV_TRANSPOSE_CASES = [
    pytest.param(
        case,
        marks=_keras_marks(case)
        + (
            [pytest.mark.backends("jax", "torch", "numpy")]
            if _tensorflow_refuses(case)
            else []
        ),
    )
    for case in KERAS_CASES
]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES, ids=_case_id)
def test_shared_kernel_equals_keras_conv_transpose(case, data_format):
    """With one kernel copied to every position it is `Conv*DTranspose`."""
    spatial, channels, kernel_size = case[0], case[1], case[2]
    y, _ = _random_problem(case, data_format)
    # Keras' transposed kernel: (*kernel_size, filters, input channels).
    conv_kernel = (
        np.random.default_rng(5)
        .normal(size=(*kernel_size, FILTERS, channels))
        .astype("float32")
    )
    if data_format == "channels_last":  # K ordered (offsets..., filter)
        position_kernel = conv_kernel.reshape(-1, channels)
    else:  # K ordered (filter, offsets...)
        position_kernel = np.moveaxis(conv_kernel, -2, 0).reshape(-1, channels)
    local_kernel = np.ascontiguousarray(
        np.broadcast_to(position_kernel, (math.prod(spatial), *position_kernel.shape))
    )
    x = local_conv_transpose(y, local_kernel, **_arguments(case, data_format))
    # Keras' convolutions run channels_last (TensorFlow has no NCHW
    # convolution on the CPU): transpose around it for channels_first.
    layer = _conv_transpose_layer(case)
    y_last = y if data_format == "channels_last" else np.moveaxis(y, 1, -1)
    layer.build(y_last.shape)
    layer.set_weights([conv_kernel])
    expected = to_numpy(layer(y_last))
    if data_format == "channels_first":
        expected = np.moveaxis(expected, -1, 1)
    np.testing.assert_allclose(to_numpy(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.training
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES[::3], ids=_case_id)
def test_gradients_equal_directional_derivatives_of_reference(case, data_format):
    """Linear in `inputs` and in `kernel`: <grad, v> == <cotangent, ref(v)>."""
    y, kernel = _random_problem(case, data_format)
    rng = np.random.default_rng(9)
    ref = _reference_arguments(case, data_format)
    cotangent = rng.normal(
        size=reference_local_conv_transpose(y, kernel, **ref).shape
    ).astype("float32")

    def loss(inputs, weights):
        outputs = local_conv_transpose(inputs, weights, **_arguments(case, data_format))
        return keras.ops.sum(outputs * keras.ops.convert_to_tensor(cotangent))

    grad_y, grad_kernel = gradients(loss, y, kernel)
    assert grad_y.shape == y.shape and grad_kernel.shape == kernel.shape
    assert_gradients_equal_directional_derivatives(
        (grad_y, grad_kernel),
        y,
        kernel,
        cotangent,
        reference_local_conv_transpose,
        ref,
        rng,
        directions=2,
    )


# --------------------------------------------------------------------------
# Static shapes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_axis_lengths_and_window_starts_equal_the_reference(padding):
    for n in range(1, 6):
        for k in range(1, 5):
            for s in range(1, 4):
                for d in (1, 2) if s == 1 else (1,):
                    for op in (None, *range(s)):
                        length, before, _ = _shapes.transpose_axis(
                            n, k, s, d, padding, op
                        )
                        expected = reference_transpose_length(n, k, s, d, padding, op)
                        assert length == expected, (n, k, s, d, op)
                        if length > 0:
                            start = reference_transpose_start(
                                n, length, k, s, d, padding
                            )
                            assert before == -start, (n, k, s, d, op)


def test_forward_geometry_maps_the_output_back_to_the_input():
    for case in CASES:
        spatial, channels, kernel, strides, dilation, padding, output_padding = case
        geo = _shapes.transpose_geometry(
            spatial, 5, kernel, strides, padding, output_padding, dilation, "t"
        )
        # Padded by geo.pads, the forward op has exactly one window per input.
        assert tuple(
            (n + lo + hi - (k - 1) * d - 1) // s + 1
            for n, (lo, hi), k, s, d in zip(
                geo.spatial_shape, geo.pads, kernel, strides, dilation
            )
        ) == tuple(spatial)
        assert geo.output_shape == tuple(spatial) and geo.channels == 5
        assert geo.kernel_shape(channels) == (
            math.prod(spatial),
            math.prod(kernel) * 5,
            channels,
        )


def test_contributing_rows_invert_unpadded_rows():
    for case in CASES:
        spatial, channels, kernel, strides, dilation, padding, output_padding = case
        geo = _shapes.transpose_geometry(
            spatial, 1, kernel, strides, padding, output_padding, dilation, "t"
        )
        rows = _shapes.unpadded_rows(geo)
        table = _shapes.contributing_rows(geo)
        assert table.shape[0] == math.prod(geo.spatial_shape)
        for row, sources in enumerate(table):
            real = sorted(int(s) for s in sources if s < rows.size)
            assert real == sorted(np.flatnonzero(rows == row).tolist())


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def _call(**kwargs):
    args = dict(
        inputs=np.zeros((1, 4, 4, 2), "float32"),
        kernel=np.zeros((16, 27, 2), "float32"),
        kernel_size=3,
    )
    args.update(kwargs)
    return local_conv_transpose(**args)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_size=0), r"local_conv_transpose: .*`kernel_size`.*kernel_size=0"),
        (dict(strides=(1, 0)), r"`strides`.*positive"),
        (dict(strides=2, dilation_rate=2), r"`strides` > 1 is not compatible"),
        (dict(padding="causal"), r"`padding` must be one of \('valid', 'same'\)"),
        (dict(padding="full"), r"padding='full'"),
        (dict(strides=2, output_padding=2), r"strictly less than the `strides`"),
        (dict(output_padding=-1, strides=2), r"output_padding=-1"),
        (dict(output_padding=(0, 0, 0)), r"`output_padding` must have 2 element"),
        (dict(output_padding="1"), r"`output_padding` must be an int or a tuple"),
        (dict(data_format="NHWC"), r"`data_format` must be one of"),
        (
            dict(kernel=np.zeros((15, 27, 2), "float32")),
            r"\(16, 9 \* filters, 2\).*\(15, 27, 2\)",
        ),
        (
            dict(kernel=np.zeros((16, 26, 2), "float32")),
            r"\(16, 9 \* filters, 2\).*\(16, 26, 2\)",
        ),
        (
            dict(kernel=np.zeros((16, 27, 3), "float32")),
            r"\(16, 9 \* filters, 2\).*\(16, 27, 3\)",
        ),
        (dict(inputs=np.zeros((4, 2), "float32")), r"rank 3, 4 or 5.*\(4, 2\)"),
        (
            dict(inputs=np.zeros((1, 4, 4, 2), bool)),
            r"`inputs` must have a numeric dtype.*bool",
        ),
    ],
)
def test_bad_arguments_are_value_errors_quoting_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _call(**kwargs)


def test_empty_output_is_a_value_error_naming_the_dimension():
    with pytest.raises(
        ValueError, match=r"spatial dimension 1 of the output would be 0"
    ):
        _call(
            inputs=np.zeros((1, 1, 1, 2), "float32"),
            kernel=np.zeros((1, 2 * 3, 2), "float32"),
            kernel_size=(1, 2),
            padding="same",
            strides=(1, 2),
            output_padding=0,
        )


def test_data_format_none_follows_keras_image_data_format():
    y = np.ones((1, 2, 3, 4), "float32")  # channels_first: 2 channels, 3x4
    kernel = np.ones((12, 1, 2), "float32")
    previous = keras.config.image_data_format()
    try:
        keras.config.set_image_data_format("channels_first")
        x = local_conv_transpose(y, kernel, 1)
    finally:
        keras.config.set_image_data_format(previous)
    assert tuple(x.shape) == (1, 1, 3, 4)
    np.testing.assert_allclose(to_numpy(x), np.full((1, 1, 3, 4), 2.0))
