"""The per-tap formulation (`_taps.local_conv_taps`) against the NumPy reference.

Forward on every backend, gradients (input and kernel) where there are any:
every padding mode, strides, dilation, both data formats, ranks 1 to 3, both
products of a tap (elementwise, einsum), position groups and an encoded
kernel.
"""

import math

import keras
import numpy as np
import pytest

from keras_localconn import _arguments, _groups, _taps
from tests.autodiff import gradients, to_numpy
from tests.helpers import (
    assert_gradients_equal_directional_derivatives,
    batch_shape,
    geometry_id,
    int8_encoded,
)
from tests.reference import reference_local_conv, reference_output_shape

RTOL = ATOL = 2e-5

# (spatial, channels, filters, kernel_size, strides, dilation, padding as the
# layers take it, padding as the reference takes it). Channels x filters
# on both sides of `_taps.ELEMENTWISE_MAX`, so that the default product is
# elementwise in some and an einsum in others.
CASES = [
    # 1D: the genomic kind (one channel, one filter), then every padding.
    ((11,), 1, 1, (5,), (1,), (1,), "valid", "valid"),
    ((11,), 1, 2, (4,), (2,), (1,), "valid", "valid"),
    ((12,), 4, 1, (4,), (4,), (1,), "same", "same"),
    ((7,), 3, 8, (3,), (1,), (2,), "same", "same"),
    ((7,), 2, 3, (3,), (1,), (2,), "causal", "causal"),
    ((7,), 3, 2, (3,), (2,), (1,), "circular", "circular"),
    ((7,), 1, 5, (2,), (3,), (1,), ((2, 1),), ((2, 1),)),
    # Circular pads wider than the axis wrap around more than once.
    ((3,), 2, 1, (5,), (1,), (2,), "circular", "circular"),
    # Strides larger than the window: some stride phases hold no tap.
    ((10,), 2, 2, (2,), (4,), (1,), "valid", "valid"),
    # 2D
    ((6, 5), 3, 2, (3, 2), (2, 3), (1, 1), "same", "same"),
    ((6, 5), 2, 9, (3, 2), (1, 1), (1, 2), "valid", "valid"),
    ((6, 5), 3, 1, (3, 2), (2, 1), (1, 2), "circular", "circular"),
    ((6, 5), 1, 2, (3, 2), (1, 1), (2, 1), ((1, 2), (0, 3)), ((1, 2), (0, 3))),
    # 3D: the few-variable field kind, and strides with dilation.
    ((4, 5, 3), 2, 1, (3, 3, 3), (1, 1, 1), (1, 1, 1), "same", "same"),
    ((4, 5, 3), 3, 6, (2, 3, 2), (2, 1, 2), (1, 2, 1), "valid", "valid"),
    ((4, 5, 3), 2, 2, (2, 3, 2), (2, 1, 2), (1, 1, 1), "circular", "circular"),
]
BATCH = 2


def case_id(case):
    spatial, channels, filters, kernel_size, strides, dilation, padding, _ = case
    geometry = geometry_id(spatial, channels, kernel_size, strides, dilation, padding)
    return f"{geometry}-f{filters}"


def _problem(case, data_format, kernels=None, seed=0):
    """Inputs, a kernel of `kernels` (default: one per output position) and
    the reference's keyword arguments."""
    spatial, channels, filters, kernel_size, strides, dilation, _, padding = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=batch_shape(BATCH, spatial, channels, data_format))
    out = reference_output_shape(spatial, kernel_size, strides, dilation, padding)
    count = math.prod(out) if kernels is None else kernels
    kernel = rng.normal(size=(count, math.prod(kernel_size) * channels, filters))
    ref = dict(
        kernel_size=kernel_size,
        strides=strides,
        dilation=dilation,
        padding=padding,
        data_format=data_format,
    )
    return x.astype("float32"), kernel.astype("float32"), ref


def _geometry(case):
    spatial, channels, _, kernel_size, strides, dilation, padding, _ = case
    return _arguments.standardize_geometry(
        spatial, channels, kernel_size, strides, padding, dilation, "test"
    )


def _run(x, kernel, case, data_format, grouping=None, elementwise=None):
    return _taps.local_conv_taps(
        keras.ops.convert_to_tensor(x),
        kernel,
        _geometry(case),
        data_format == "channels_last",
        grouping,
        elementwise,
    )


def _assert_reference_gradients(case, data_format, x, kernel, ref, run, reference):
    """Directional derivatives of ``sum(cotangent * run(x, kernel))``."""
    rng = np.random.default_rng(11)
    cotangent = rng.normal(size=reference(x, kernel, **ref).shape).astype("float32")

    def loss(inputs, weights):
        return keras.ops.sum(
            run(inputs, weights) * keras.ops.convert_to_tensor(cotangent)
        )

    grads = gradients(loss, x, kernel)
    assert_gradients_equal_directional_derivatives(
        grads, x, kernel, cotangent, reference, ref, rng
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_taps_equal_the_numpy_reference(case, data_format):
    x, kernel, ref = _problem(case, data_format)
    y = _run(x, kernel, case, data_format)
    expected = reference_local_conv(x, kernel, **ref)
    assert tuple(y.shape) == expected.shape
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


def _data_format(case):
    """The data formats take turns over the cases where one format is run."""
    return ("channels_last", "channels_first")[CASES.index(case) % 2]


def _other_product(case):
    """The product of a tap that `_taps.elementwise_pays` does not choose."""
    spatial, channels, filters, *_ = case
    return not _taps.elementwise_pays(channels, filters)


# Cases of either default product, each run with the other one too.
OTHER_PRODUCT_CASES = CASES[2::4]


@pytest.mark.parametrize("case", OTHER_PRODUCT_CASES, ids=case_id)
def test_the_other_product_of_a_tap_equals_the_numpy_reference(case):
    data_format = _data_format(case)
    x, kernel, ref = _problem(case, data_format)
    y = _run(x, kernel, case, data_format, elementwise=_other_product(case))
    expected = reference_local_conv(x, kernel, **ref)
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.training
@pytest.mark.parametrize(
    ("case", "other_product"),
    [(case, False) for case in CASES] + [(case, True) for case in OTHER_PRODUCT_CASES],
    ids=[case_id(case) for case in CASES]
    + [f"{case_id(case)}-other-product" for case in OTHER_PRODUCT_CASES],
)
def test_taps_have_the_reference_gradients(case, other_product):
    """Input and kernel gradients."""
    data_format = _data_format(case)
    x, kernel, ref = _problem(case, data_format)
    elementwise = _other_product(case) if other_product else None

    def run(inputs, weights):
        return _run(inputs, weights, case, data_format, elementwise=elementwise)

    _assert_reference_gradients(
        case, data_format, x, kernel, ref, run, reference_local_conv
    )


# A block shape per rank, and a map (every other position in one of 3 groups).
GROUPED = [(CASES[1], 2), (CASES[9], (2, 1)), (CASES[14], None)]


def _grouping(case, block_shape):
    geo = _geometry(case)
    if block_shape is None:
        block_shape = np.arange(geo.num_positions).reshape(geo.output_shape) % 3
    grouping = _groups.resolve(block_shape, geo.output_shape, "test")
    return grouping, grouping.groups


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    ("case", "block_shape"), GROUPED, ids=[case_id(c) for c, _ in GROUPED]
)
def test_grouped_taps_equal_the_reference_with_each_groups_kernel(
    case, block_shape, data_format
):
    grouping, groups = _grouping(case, block_shape)
    x, kernel, ref = _problem(case, data_format, kernels=grouping.count)
    y = _run(x, kernel, case, data_format, grouping)
    expected = reference_local_conv(x, kernel[groups], **ref)
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.training
@pytest.mark.parametrize(
    ("case", "block_shape"), GROUPED, ids=[case_id(c) for c, _ in GROUPED]
)
def test_grouped_taps_sum_the_kernel_gradient_over_each_group(case, block_shape):
    data_format = "channels_first" if block_shape is None else "channels_last"
    grouping, groups = _grouping(case, block_shape)
    x, kernel, ref = _problem(case, data_format, kernels=grouping.count)

    def run(inputs, weights):
        return _run(inputs, weights, case, data_format, grouping)

    def grouped_reference(inputs, weights, **ref):
        return reference_local_conv(inputs, weights[groups], **ref)

    _assert_reference_gradients(
        case, data_format, x, kernel, ref, run, grouped_reference
    )


@pytest.mark.parametrize("column_scale", [False, True], ids=["decoded", "column"])
def test_an_encoded_kernel_computes_as_its_decoded_kernel(column_scale):
    """Its scale applied to the kernel or, as a column scale, to the
    outputs: the same numbers."""
    case = CASES[12]
    x, kernel, ref = _problem(case, "channels_last")
    encoded, decoded = int8_encoded(kernel, column_scale)
    y = _run(x, encoded, case, "channels_last")
    expected = reference_local_conv(x, decoded, **ref)
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.training
def test_an_encoded_kernel_passes_the_gradient_to_the_inputs():
    """The input gradient's directional derivative (an encoded kernel is not
    trained)."""
    case = CASES[12]
    x, kernel, ref = _problem(case, "channels_last")
    encoded, decoded = int8_encoded(kernel)
    cotangent = np.random.default_rng(5).normal(
        size=reference_local_conv(x, decoded, **ref).shape
    )

    def loss(inputs):
        outputs = _run(inputs, encoded, case, "channels_last")
        return keras.ops.sum(
            outputs * keras.ops.convert_to_tensor(cotangent.astype("float32"))
        )

    (grad_inputs,) = gradients(loss, x)
    v = np.random.default_rng(6).normal(size=x.shape)
    np.testing.assert_allclose(
        np.sum(grad_inputs * v),
        np.sum(cotangent * reference_local_conv(v, decoded, **ref)),
        rtol=1e-4,
        atol=1e-3,
    )
