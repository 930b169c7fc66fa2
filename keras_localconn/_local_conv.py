"""The forward engine: locally connected convolution on `keras.ops`.

A locally connected layer is a convolution whose kernel gains a leading
*positions* axis: output position ``p`` has its own ``(K, filters)`` matrix.

How it computes: the input is transposed once so that its spatial axes come
first, padded, and flattened into one row per pixel. A gather of rows, with
indices computed in numpy from the static shapes (`_shapes.gather_rows`),
builds the patches of a group of output positions, position-major, and one
batched matmul contracts them with those positions' kernels. Either all
positions go at once (`_all_at_once`) or they go in chunks (`_chunked`); the
`_schedule.Formulation` of the call says which, and how. The number of ops
grows neither with the kernel size nor with the number of positions (a
Python loop over chunks aside).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_localconn import _arguments, _schedule, _shapes


def local_conv(
    inputs,
    kernel,
    kernel_size,
    strides=1,
    padding="valid",
    dilation_rate=1,
    data_format=None,
    *,
    bias=None,
    owner="local_conv",
    formulation=None,
):
    """`keras_localconn.ops.local_conv`, plus a bias and an explicit formulation.

    `bias`, ``(P, filters)``, is added while the result is still
    position-major, before the final transpose. `formulation` (a
    `_schedule.Formulation`) overrides the default of `_schedule.formulation`.
    """
    geo, channels_last = checked_geometry(
        inputs, kernel, kernel_size, strides, padding, dilation_rate, data_format, owner
    )
    if formulation is None:
        formulation = _schedule.formulation(
            geo, inputs.shape[0], inputs.dtype, kernel.shape[-1]
        )
    x_rows = _input_rows(inputs, geo, channels_last, formulation)
    if formulation.chunk is None or formulation.chunk >= geo.num_positions:
        outputs = _all_at_once(x_rows, kernel, geo, channels_last, formulation)
    else:
        outputs = _chunked(x_rows, kernel, geo, channels_last, formulation)
    return _output(outputs, bias, geo, channels_last)


def checked_geometry(
    inputs, kernel, kernel_size, strides, padding, dilation_rate, data_format, owner
):
    """`(geometry, channels_last)` of one call, every argument checked.

    What `local_conv` checks before it computes, and all that a symbolic call
    (`compute_output_spec`) needs.
    """
    data_format, spatial_shape, channels = _arguments.standardize_inputs(
        inputs, kernel, data_format, owner
    )
    geo = _arguments.standardize_geometry(
        spatial_shape, channels, kernel_size, strides, padding, dilation_rate, owner
    )
    kernel_shape = tuple(kernel.shape)
    if len(kernel_shape) != 3 or kernel_shape[:2] != geo.kernel_shape(None)[:2]:
        raise ValueError(
            f"{owner}: `kernel` must have shape (P, K, filters) = "
            f"({geo.num_positions}, {geo.patch_size}, filters) for inputs of "
            f"shape {tuple(inputs.shape)}, kernel_size={geo.kernel_size}, "
            f"strides={geo.strides}, padding={padding!r}, "
            f"dilation_rate={geo.dilation_rate} (P = prod of output shape "
            f"{geo.output_shape}, K = prod(kernel_size) * {channels} channels). "
            f"Received kernel of shape {kernel_shape}"
        )
    return geo, data_format == "channels_last"


def output_shape(geo, batch, filters, channels_last):
    """The shape `local_conv` returns for `geo`."""
    if channels_last:
        return (batch, *geo.output_shape, filters)
    return (batch, filters, *geo.output_shape)


def _input_rows(inputs, geo, channels_last, formulation):
    """The padded input with one row per pixel: the rows every gather reads.

    Rows of ``(batch, channels)`` with `formulation.batch_before_channels`,
    else rows of ``channels * batch`` contiguous values, which torch's gather
    copies whole (2x faster). The one place where padding is applied.
    """
    rank = geo.rank
    spatial = range(1, rank + 1) if channels_last else range(2, rank + 2)
    channel_axis = rank + 1 if channels_last else 1
    if formulation.batch_before_channels:
        trailing = (0, channel_axis)
    else:
        trailing = (channel_axis, 0)
    x = ops.transpose(inputs, (*spatial, *trailing))
    if any(lo or hi for lo, hi in geo.pads):
        if geo.pad_mode == "zeros":
            x = ops.pad(x, (*geo.pads, (0, 0), (0, 0)))
        else:
            x = _pad_circular(x, geo)
    num_pixels = math.prod(geo.padded_shape)
    if formulation.batch_before_channels:
        return ops.reshape(x, (num_pixels, -1, geo.channels))
    return ops.reshape(x, (num_pixels, -1))


def _pad_circular(x, geo):
    """`x` (spatial axes first) padded with values from the opposite edge.

    One gather per padded axis, of indices wrapped in numpy (any pad size, the
    input repeating periodically); `keras.ops.pad`'s "wrap" mode is not
    available on every backend.
    """
    for axis, (n, (lo, hi)) in enumerate(zip(geo.spatial_shape, geo.pads)):
        if lo or hi:
            wrapped = (np.arange(-lo, n + hi) % n).astype("int32")
            x = ops.take(x, wrapped, axis=axis)
    return x


def _contract(x_rows, rows, kernel, geo, channels_last, formulation):
    """``(c, batch, filters)`` for `c` positions: patches, then one matmul.

    `rows` are the ``c * taps`` rows of `x_rows` the positions read and
    `kernel` their ``(c, K, filters)``.
    """
    positions = kernel.shape[0]
    patches = ops.take(x_rows, rows, axis=0)  # (c * taps, ...trailing)
    if formulation.batch_before_channels:  # (c, taps, B, C) -> (c, B, K)
        patches = ops.reshape(patches, (positions, geo.taps, -1, geo.channels))
        order = (0, 2, 1, 3) if channels_last else (0, 2, 3, 1)
        patches = ops.transpose(patches, order)
        patches = ops.reshape(patches, (positions, -1, geo.patch_size))
        return ops.matmul(patches, kernel)
    if channels_last:  # (c, taps, C, B) is (c, K, B) already
        patches = ops.reshape(patches, (positions, geo.patch_size, -1))
    else:  # K ordered (channel, offsets)
        patches = ops.reshape(patches, (positions, geo.taps, geo.channels, -1))
        patches = ops.transpose(patches, (0, 2, 1, 3))
        patches = ops.reshape(patches, (positions, geo.patch_size, -1))
    return ops.matmul(ops.transpose(patches, (0, 2, 1)), kernel)


def _all_at_once(x_rows, kernel, geo, channels_last, formulation):
    """``(P, batch, filters)``: every patch in one gather, one matmul."""
    rows = _shapes.gather_rows(geo)
    return _contract(x_rows, rows, kernel, geo, channels_last, formulation)


def _chunked(x_rows, kernel, geo, channels_last, formulation):
    """``(P, batch, filters)``, `formulation.chunk` positions at a time.

    ``count`` whole chunks go through one loop, with the kernel viewed as
    ``(count, chunk, K, F)`` (a slice of the kernel inside the loop would
    cost a kernel-sized gradient per chunk), then the remaining positions.
    """
    chunk, num_positions = formulation.chunk, geo.num_positions
    filters = kernel.shape[-1]
    count = num_positions // chunk
    covered = count * chunk
    rows = _shapes.gather_rows(geo).reshape(num_positions, -1)
    kernel_chunks = ops.reshape(
        kernel[:covered], (count, chunk, geo.patch_size, filters)
    )
    chunk_rows = ops.convert_to_tensor(rows[:covered].reshape(count, -1))

    def contract(x_rows, rows_i, kernel_i):
        return _contract(x_rows, rows_i, kernel_i, geo, channels_last, formulation)

    if formulation.remat:
        # The input is an argument, not a closure: TensorFlow's
        # recompute_grad differentiates with respect to arguments only.
        contract = keras.remat(contract)

    if formulation.loop_by_map:
        outputs = ops.map(
            lambda pair: contract(x_rows, *pair), (chunk_rows, kernel_chunks)
        )
    else:
        pairs = zip(ops.unstack(chunk_rows), ops.unstack(kernel_chunks))
        outputs = ops.stack([contract(x_rows, *pair) for pair in pairs])
    outputs = ops.reshape(outputs, (covered, -1, filters))
    if covered < num_positions:
        rest_rows = rows[covered:].ravel()
        rest = _contract(
            x_rows, rest_rows, kernel[covered:], geo, channels_last, formulation
        )
        outputs = ops.concatenate([outputs, rest], axis=0)
    return outputs


def _output(outputs, bias, geo, channels_last):
    """``(P, B, F)`` plus the bias, as ``(B, *out, F)`` or ``(B, F, *out)``."""
    filters = outputs.shape[-1]
    if bias is not None:
        outputs = outputs + ops.expand_dims(bias, 1)
    if channels_last:  # (P, B, F) -> (B, P, F) -> (B, *out, F)
        outputs = ops.transpose(outputs, (1, 0, 2))
        return ops.reshape(outputs, (-1, *geo.output_shape, filters))
    outputs = ops.transpose(outputs, (1, 2, 0))  # (B, F, P)
    return ops.reshape(outputs, (-1, filters, *geo.output_shape))
