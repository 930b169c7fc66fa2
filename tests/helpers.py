"""What several test modules share: random data, the layer tables, the case
grids of the forward op with their ids and random problem, the formulations'
ids, trained-looking convolutions with the padding both kinds of layer share,
a quantized layer's kernel and inputs in NumPy, the gradient check and jax's
local convolution as an oracle.

Test modules import from here (and from the reference modules); none imports
from another test module.
"""

import itertools
import math

import keras
import numpy as np

from keras_localconn import (
    LocallyConnected1D,
    LocallyConnected1DTranspose,
    LocallyConnected2D,
    LocallyConnected2DTranspose,
    LocallyConnected3D,
    LocallyConnected3DTranspose,
    _local_conv,
)
from tests.autodiff import to_numpy
from tests.reference import reference_output_shape

LOCALLY_CONNECTED = {
    1: LocallyConnected1D,
    2: LocallyConnected2D,
    3: LocallyConnected3D,
}
LOCALLY_CONNECTED_TRANSPOSE = {
    1: LocallyConnected1DTranspose,
    2: LocallyConnected2DTranspose,
    3: LocallyConnected3DTranspose,
}
CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
CONV_TRANSPOSE = {
    1: keras.layers.Conv1DTranspose,
    2: keras.layers.Conv2DTranspose,
    3: keras.layers.Conv3DTranspose,
}


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def random_array(shape, seed=0):
    """Standard normal float32 values, the same for the same seed."""
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def randomize_weights(layer, seed=1):
    """Sets every weight of a built layer to `random_array` values."""
    layer.set_weights(
        [random_array(w.shape, seed + i) for i, w in enumerate(layer.weights)]
    )


def batch_shape(batch, spatial, channels, data_format):
    """The shape of a batch in `data_format` (`batch` may be None)."""
    if data_format == "channels_last":
        return (batch, *spatial, channels)
    return (batch, channels, *spatial)


# --------------------------------------------------------------------------
# The forward op's cases: named padding, and circular or explicit padding
# --------------------------------------------------------------------------


def _forward_cases():
    """(spatial, channels, kernel_size, strides, dilation, padding, batch)."""
    rank_grids = {
        1: dict(
            spatial=[(7,)],
            kernel=[(3,), (2,)],
            strides=[(1,), (2,), (3,)],
            dilation=[(1,), (2,)],
            padding=["valid", "same", "causal"],
        ),
        2: dict(
            spatial=[(6, 5)],
            kernel=[(3, 2)],
            strides=[(1, 1), (2, 1), (2, 3)],
            dilation=[(1, 1), (2, 1), (1, 2)],
            padding=["valid", "same"],
        ),
        3: dict(
            spatial=[(4, 5, 3)],
            kernel=[(2, 3, 2)],
            strides=[(1, 1, 1), (2, 1, 2)],
            dilation=[(1, 1, 1), (1, 2, 1)],
            padding=["valid", "same"],
        ),
    }
    for grid in rank_grids.values():
        for spatial, kernel, strides, dilation, padding in itertools.product(
            grid["spatial"],
            grid["kernel"],
            grid["strides"],
            grid["dilation"],
            grid["padding"],
        ):
            if any(s > 1 and d > 1 for s, d in zip(strides, dilation)):
                continue
            yield spatial, 3, kernel, strides, dilation, padding, 2
    # Edge shapes: kernel = input size, one channel, batch 1, odd strides.
    yield (5,), 1, (5,), (1,), (1,), "valid", 1
    yield (5, 4), 2, (5, 4), (1, 1), (1, 1), "valid", 1
    yield (5, 4), 1, (5, 4), (1, 1), (1, 1), "same", 1
    yield (1, 1), 4, (1, 1), (1, 1), (1, 1), "valid", 3
    yield (9, 2), 1, (4, 1), (3, 2), (1, 1), "same", 1
    yield (2, 3, 2), 1, (2, 3, 2), (1, 1, 1), (1, 1, 1), "valid", 1
    yield (6,), 2, (4,), (1,), (2,), "causal", 1


# (spatial, channels, kernel_size, strides, dilation, padding, batch), with
# the padding Keras' Conv layers know: "valid", "same", "causal" (1D).
FORWARD_CASES = list(_forward_cases())

# (spatial, channels, kernel_size, strides, dilation, padding as the user
# writes it, the same padding as the reference takes it: a name or pairs).
PADDING_CASES = [
    # 1D: every way of writing explicit padding, strides, dilation.
    ((7,), 3, (3,), (1,), (1,), "circular", "circular"),
    ((7,), 3, (3,), (2,), (1,), "circular", "circular"),
    ((7,), 3, (2,), (3,), (1,), "circular", "circular"),
    ((7,), 3, (3,), (1,), (2,), "CIRCULAR", "circular"),
    ((7,), 3, (3,), (1,), (1,), 2, ((2, 2),)),
    ((7,), 3, (3,), (2,), (1,), (1,), ((1, 1),)),
    ((7,), 3, (2,), (1,), (2,), (0, 3), ((0, 3),)),  # ZeroPadding1D's pair
    ((7,), 3, (3,), (3,), (1,), ((2, 1),), ((2, 1),)),
    ((7,), 3, (3,), (1,), (1,), 0, ((0, 0),)),
    # Circular pads wider than the axis wrap around more than once.
    ((3,), 2, (5,), (1,), (2,), "circular", "circular"),
    ((2,), 1, (4,), (1,), (1,), "circular", "circular"),
    # 2D
    ((6, 5), 3, (3, 2), (1, 1), (1, 1), "circular", "circular"),
    ((6, 5), 3, (3, 2), (2, 3), (1, 1), "circular", "circular"),
    ((6, 5), 3, (3, 2), (1, 1), (1, 2), "circular", "circular"),
    ((6, 5), 3, (3, 2), (2, 1), (1, 2), "circular", "circular"),
    ((6, 5), 3, (3, 2), (1, 1), (1, 1), 1, ((1, 1), (1, 1))),
    ((6, 5), 3, (3, 2), (2, 3), (1, 1), (2, 0), ((2, 2), (0, 0))),
    ((6, 5), 3, (3, 2), (1, 1), (2, 1), ((1, 2), (0, 3)), ((1, 2), (0, 3))),
    ((2, 3), 1, (3, 3), (1, 1), (2, 1), "circular", "circular"),
    # 3D
    ((4, 5, 3), 2, (2, 3, 2), (1, 1, 1), (1, 1, 1), "circular", "circular"),
    ((4, 5, 3), 2, (2, 3, 2), (2, 1, 2), (1, 1, 1), "circular", "circular"),
    ((4, 5, 3), 2, (2, 3, 2), (1, 1, 1), (1, 2, 1), "circular", "circular"),
    (
        (4, 5, 3),
        2,
        (2, 3, 2),
        (2, 1, 2),
        (1, 1, 1),
        (1, 0, 2),
        ((1, 1), (0, 0), (2, 2)),
    ),
    (
        (4, 5, 3),
        2,
        (2, 3, 2),
        (1, 1, 1),
        (1, 2, 1),
        ((1, 0), (2, 1), (0, 1)),
        ((1, 0), (2, 1), (0, 1)),
    ),
]


def _joined(values):
    return "x".join(map(str, values))


def geometry_id(spatial, channels, kernel, strides, dilation, padding):
    """The id of a case's first six entries, which every case grid shares."""
    return (
        f"in{_joined(spatial)}c{channels}-k{_joined(kernel)}"
        f"-s{_joined(strides)}-d{_joined(dilation)}"
        f"-{str(padding).replace(' ', '')}"
    )


def forward_case_id(case):
    """A `FORWARD_CASES` entry as a test id."""
    *geometry, batch = case
    return f"{geometry_id(*geometry)}-b{batch}"


def padding_case_id(case):
    """A `PADDING_CASES` entry as a test id (the padding as the user wrote it)."""
    *geometry, _ = case
    return geometry_id(*geometry)


def random_forward_problem(case, data_format, seed=0):
    """Inputs x and a kernel (P, K, 4) for a `FORWARD_CASES` entry."""
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=batch_shape(batch, spatial, channels, data_format))
    out = reference_output_shape(spatial, kernel_size, strides, dilation, padding)
    filters = 4
    kernel = rng.normal(
        size=(math.prod(out), math.prod(kernel_size) * channels, filters)
    )
    return x.astype("float32"), kernel.astype("float32"), out, filters


# --------------------------------------------------------------------------
# Quantized layers, as Keras' conventions define their variables
# --------------------------------------------------------------------------


def int8_encoded(kernel, column_scale=False):
    """``(encoded, decoded)``: a ``(P, K, F)`` kernel as an engine
    `EncodedKernel` of int8 values and one scale per (position, filter),
    which decoding applies or, with `column_scale`, the engine applies to the
    outputs; and the float kernel it stands for."""
    scale = np.abs(kernel).max(axis=1) / 127  # (P, F)
    values = np.round(kernel / scale[:, None, :]).astype("int8")
    parts = (keras.ops.convert_to_tensor(values), keras.ops.convert_to_tensor(scale))

    def decode(values, scale):
        values = keras.ops.cast(values, "float32")
        if column_scale:
            return values
        return values * keras.ops.expand_dims(scale, 1)

    encoded = _local_conv.EncodedKernel(
        parts,
        decode,
        kernel.shape,
        (lambda values, scale: scale) if column_scale else None,
    )
    return encoded, values.astype("float32") * scale[:, None, :]


def unpacked_int4(packed, filters):
    """Two signed nibbles a byte, the low one first, along the last axis."""
    packed = packed.astype("uint8")
    nibbles = np.stack([packed & 15, packed >> 4], axis=-1).astype("int16")
    values = (nibbles ^ 8) - 8
    return values.reshape(*packed.shape[:-1], -1)[..., :filters]


def dequantized_kernel(layer, transposed=False):
    """The float kernel the layer's variables stand for (Keras' conventions:
    ``int / scale``; with int4 blocks, ``(int - zero) * scale``). A forward
    kernel (P, K, F) has its scales over K, packs along F; a transposed one
    (P, K, C) has them over C, packs along K."""
    values = to_numpy(layer._kernel.value)
    scale = to_numpy(layer.kernel_scale.value).astype("float64")
    if transposed:  # as a forward kernel: (P, C, K)
        values = values.transpose(0, 2, 1)
        scale = scale if scale.ndim == 2 else scale.transpose(0, 2, 1)
    if layer.quantization_mode == "int4":
        length = layer._int4_kernel_shape[1 if transposed else 2]
        values = unpacked_int4(values, length)
    values = values.astype("float64")
    if scale.ndim == 2:
        kernel = values / scale[:, None, :]
    else:
        groups = np.arange(values.shape[1]) // layer._int4_block_size
        zero = to_numpy(layer.kernel_zero.value).astype("float64")
        if transposed:
            zero = zero.transpose(0, 2, 1)
        kernel = (values - zero[:, groups]) * scale[:, groups]
    return kernel.transpose(0, 2, 1) if transposed else kernel


def quantized_inputs(x):
    """`x` quantized to int8 with an abs-max scale per sample, dequantized."""
    axes = tuple(range(1, x.ndim))
    scale = 127 / (np.abs(x).max(axis=axes, keepdims=True) + keras.backend.epsilon())
    return np.clip(np.round(x * scale), -127, 127) / scale


# --------------------------------------------------------------------------
# Assertions
# --------------------------------------------------------------------------


def assert_gradients_equal_directional_derivatives(
    grads, inputs, kernel, cotangent, reference, reference_kwargs, rng, directions=1
):
    """The ops are linear in `inputs` and in `kernel`.

    For L = sum(cotangent * op(inputs, kernel)), the gradient's inner product
    with any direction v is sum(cotangent * reference(v, kernel)), exactly;
    checked on `directions` random directions for both arguments.
    """
    grad_inputs, grad_kernel = grads
    for _ in range(directions):
        v = rng.normal(size=inputs.shape)
        u = rng.normal(size=kernel.shape)
        np.testing.assert_allclose(
            np.sum(grad_inputs * v),
            np.sum(cotangent * reference(v, kernel, **reference_kwargs)),
            rtol=1e-4,
            atol=1e-3,
        )
        np.testing.assert_allclose(
            np.sum(grad_kernel * u),
            np.sum(cotangent * reference(inputs, u, **reference_kwargs)),
            rtol=1e-4,
            atol=1e-3,
        )


def jax_local_conv(x, kernel, out_shape, kernel_size, strides, dilation, padding):
    """`jax.lax.conv_general_dilated_local` on channels_first `x`.

    `kernel` is (P, K, F) in channels_first's K order (channel, offsets...),
    which is jax's unfolded-kernel layout; `padding` is what jax takes: a
    name in capitals or (before, after) pairs.
    """
    import jax

    rank = len(kernel_size)
    spec = "NC" + "DHW"[-rank:]
    return np.asarray(
        jax.lax.conv_general_dilated_local(
            x,
            kernel.reshape(*out_shape, kernel.shape[1], kernel.shape[2]),
            window_strides=strides,
            padding=padding,
            filter_shape=kernel_size,
            rhs_dilation=dilation,
            dimension_numbers=(spec, "DHW"[-rank:] + "IO", spec),
            precision=jax.lax.Precision.HIGHEST,
        )
    )


# --------------------------------------------------------------------------
# Formulations and convolutions
# --------------------------------------------------------------------------


def formulation_id(formulation):
    """A `_schedule.Formulation` as a test id."""
    chunk, batch_first, by_map, group, scatter_add, conv, taps = formulation
    if taps:
        return "taps"
    return (
        f"{'all' if chunk is None else f'chunk{chunk}'}"
        f"-{'bc' if batch_first else 'cb'}"
        f"-{'map' if by_map else 'loop'}"
        f"{'' if group is None else f'-group{group}'}"
        f"{'-segsum' if scatter_add is False else ''}"
        f"{'' if conv else '-matmul'}"
    )


# (spatial, channels, kernel_size, strides, dilation, padding): every padding
# a Keras Conv shares with the locally connected layers, strides, dilation.
CONV_LAYER_CASES = [
    ((9,), 2, 3, 1, 1, "valid"),
    ((9,), 2, 3, 2, 1, "same"),
    ((9,), 2, 3, 1, 2, "causal"),
    ((9,), 2, 2, 3, 1, "valid"),
    ((9,), 2, 3, 1, 2, "same"),
    ((7, 6), 2, (3, 2), 1, 1, "same"),
    ((7, 6), 2, (3, 2), (2, 1), 1, "valid"),
    ((7, 6), 2, (3, 2), 1, (1, 2), "same"),
    ((7, 6), 2, (3, 2), 2, 1, "same"),
    ((5, 4, 3), 2, (2, 3, 2), 1, 1, "valid"),
    ((5, 4, 3), 2, (2, 3, 2), (2, 1, 2), 1, "same"),
    ((5, 6, 3), 2, (2, 3, 2), 1, (1, 2, 1), "valid"),
]


def conv_layer_case_id(case):
    """A `CONV_LAYER_CASES` entry as a test id."""
    spatial, channels, kernel, strides, dilation, padding = case
    return f"{len(spatial)}d-k{kernel}-s{strides}-d{dilation}-{padding}".replace(
        " ", ""
    )


def trained_looking_conv(case, data_format, seed=0, **kwargs):
    """A built Conv*D of 3 filters for a `CONV_LAYER_CASES` entry, with
    random kernel and bias, as if trained."""
    spatial, channels, kernel_size, strides, dilation, padding = case
    conv = CONV[len(spatial)](
        3,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
        **kwargs,
    )
    conv.build(batch_shape(None, spatial, channels, data_format))
    rng = np.random.default_rng(seed)
    conv.set_weights([rng.normal(size=w.shape) for w in conv.get_weights()])
    return conv


def conv_inputs(case, data_format, batch=2, seed=1):
    """Random inputs for a `CONV_LAYER_CASES` entry."""
    spatial, channels = case[:2]
    return random_array(batch_shape(batch, spatial, channels, data_format), seed)


def conv_outputs(conv, x):
    """`conv(x)`; TensorFlow has no channels_first convolution on the CPU, so
    there a channels_last twin with the same weights runs, transposed around."""
    if conv.data_format == "channels_last" or keras.backend.backend() != "tensorflow":
        return to_numpy(conv(x))
    config = dict(conv.get_config(), data_format="channels_last", name=None)
    twin = type(conv).from_config(config)
    x_last = np.moveaxis(x, 1, -1)
    twin.build(x_last.shape)
    twin.set_weights(conv.get_weights())  # the kernel layout is the same
    return np.moveaxis(to_numpy(twin(x_last)), -1, 1)
