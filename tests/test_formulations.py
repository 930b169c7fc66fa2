"""Every formulation of the computation against the NumPy reference.

`local_conv` chooses, by shape and backend, between all positions at once and
positions in chunks, and between two row layouts of the input; each choice
is forced here on every backend, so that none is only tested where it is the
default.
"""

import math

import keras
import numpy as np
import pytest

from keras_localconn import _arguments, _local_conv, _schedule, ops
from keras_localconn._schedule import Formulation
from keras_localconn.layers import LocallyConnected2D
from tests.autodiff import gradients, to_numpy
from tests.helpers import (
    FORWARD_CASES,
    PADDING_CASES,
    assert_gradients_equal_directional_derivatives,
    batch_shape,
    forward_case_id,
    padding_case_id,
    random_forward_problem,
)
from tests.reference import reference_local_conv

RTOL = ATOL = 2e-5

# Chunks of 3 leave a remainder whenever P is not a multiple of 3. Together
# these cover every layout, both loops and both backward passes.
FORMULATIONS = [
    Formulation(None, False, True, True),
    Formulation(None, True, True, True),
    Formulation(1, False, True, True),
    Formulation(3, True, True, False),
    Formulation(1, True, False, True),
    Formulation(3, False, False, False),
]


def _formulation_id(formulation):
    chunk, batch_first, by_map, remat = formulation
    return (
        f"{'all' if chunk is None else f'chunk{chunk}'}"
        f"-{'bc' if batch_first else 'cb'}"
        f"-{'map' if by_map else 'loop'}{'-remat' if remat else ''}"
    )


def _run(x, kernel, case, data_format, formulation, bias=None):
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    return _local_conv.local_conv(
        x,
        kernel,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
        bias=bias,
        formulation=formulation,
    )


@pytest.mark.parametrize("formulation", FORMULATIONS, ids=_formulation_id)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "case", FORWARD_CASES[::2] + FORWARD_CASES[-7:], ids=forward_case_id
)
def test_every_formulation_equals_numpy_reference(case, data_format, formulation):
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    x, kernel, out, filters = random_forward_problem(case, data_format)
    bias = np.random.default_rng(3).normal(size=(math.prod(out), filters))
    bias = bias.astype("float32")
    y = _run(x, kernel, case, data_format, formulation, bias=bias)
    expected = reference_local_conv(
        x, kernel, kernel_size, strides, dilation, padding, data_format
    )
    # The bias is one value per (output position, filter).
    per_position = bias.reshape(*out, filters)
    if data_format == "channels_first":
        per_position = np.moveaxis(per_position, -1, 0)
    expected = expected + per_position
    assert tuple(y.shape) == expected.shape
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.training
@pytest.mark.parametrize("formulation", FORMULATIONS[1:], ids=_formulation_id)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", FORWARD_CASES[1::9], ids=forward_case_id)
def test_every_formulation_has_the_reference_gradients(case, data_format, formulation):
    """Directional derivatives, as in test_ops, through each formulation."""
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    x, kernel, out, filters = random_forward_problem(case, data_format)
    rng = np.random.default_rng(11)
    ref = dict(
        kernel_size=kernel_size,
        strides=strides,
        dilation=dilation,
        padding=padding,
        data_format=data_format,
    )
    cotangent = rng.normal(size=reference_local_conv(x, kernel, **ref).shape)
    cotangent = cotangent.astype("float32")

    def loss(inputs, weights):
        outputs = _run(inputs, weights, case, data_format, formulation)
        return keras.ops.sum(outputs * keras.ops.convert_to_tensor(cotangent))

    grads = gradients(loss, x, kernel)
    assert_gradients_equal_directional_derivatives(
        grads, x, kernel, cotangent, reference_local_conv, ref, rng
    )


def test_chunks_bound_the_patch_bytes_and_batch_one_is_never_chunked():
    geo = _arguments.standardize_geometry((63, 63), 16, 9, 1, "valid", 1, "test")
    assert _schedule.chunk_positions(geo, 1, 4, 16) is None
    per_position = geo.patch_size * 32 * 4
    chunk = _schedule.chunk_positions(geo, 32, 4, 16)
    assert 1 <= chunk < geo.num_positions
    assert chunk * per_position <= _schedule.CHUNK_BYTES
    # A small problem is done in one piece, whatever the batch.
    small = _arguments.standardize_geometry((8, 8), 2, 3, 1, "valid", 1, "test")
    assert _schedule.chunk_positions(small, 64, 4, 16) is None
    # Where chunks pay off only above the kernel's size: batch > filters.
    assert _schedule.chunk_positions(geo, 8, 4, 16, above_kernel=True) is None
    assert _schedule.chunk_positions(geo, 32, 4, 16, above_kernel=True) == chunk


def test_an_unknown_batch_is_scheduled_as_the_assumed_batch():
    geo = _arguments.standardize_geometry((63, 63), 16, 9, 1, "valid", 1, "test")
    for backend in ("jax", "tensorflow", "torch", "numpy"):
        assumed = _schedule.formulation(
            geo, _schedule.ASSUMED_BATCH, "float32", 16, backend
        )
        assert _schedule.formulation(geo, None, "float32", 16, backend) == assumed


@pytest.mark.parametrize("formulation", FORMULATIONS, ids=_formulation_id)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", PADDING_CASES[::3], ids=padding_case_id)
def test_every_formulation_with_circular_or_explicit_padding(
    case, data_format, formulation
):
    spatial, channels, kernel_size, strides, dilation, padding, ref_padding = case
    rng = np.random.default_rng(5)
    x = rng.normal(size=batch_shape(2, spatial, channels, data_format))
    x = x.astype("float32")
    out = ops.local_conv_output_shape(spatial, kernel_size, strides, padding, dilation)
    kernel = rng.normal(size=(math.prod(out), math.prod(kernel_size) * channels, 3))
    kernel = kernel.astype("float32")
    y = _run(
        x,
        kernel,
        (spatial, channels, kernel_size, strides, dilation, padding, 2),
        data_format,
        formulation,
    )
    expected = reference_local_conv(
        x, kernel, kernel_size, strides, dilation, ref_padding, data_format
    )
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("by_map", [False, True], ids=["loop", "map"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["cb", "bc"])
def test_chunks_in_a_model_traced_for_any_batch_size(batch_first, by_map):
    """A functional model is traced with an unknown batch size; predict
    then runs the chunked path on two sizes."""
    formulation = Formulation(2, batch_first, by_map, True)

    class Chunked(LocallyConnected2D):
        @staticmethod
        def _engine(*args, **kwargs):
            return _local_conv.local_conv(*args, **kwargs, formulation=formulation)

    inputs = keras.Input((6, 5, 3))
    layer = Chunked(4, (3, 2), use_bias=False)
    model = keras.Model(inputs, layer(inputs))
    kernel = to_numpy(layer.kernel)
    for batch in (3, 5):
        x = np.random.default_rng(batch).normal(size=(batch, 6, 5, 3))
        x = x.astype("float32")
        expected = reference_local_conv(
            x, kernel, (3, 2), (1, 1), (1, 1), "valid", "channels_last"
        )
        y = model.predict(x, verbose=0)
        np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL)
