"""The functional core: locally connected convolution on `keras.ops`.

A locally connected layer is a convolution whose kernel gains a leading
*positions* axis: output position ``p`` has its own ``(K, filters)`` matrix.
Everything here is backend-neutral (only `keras.ops` and numpy for static
shape arithmetic), for 1, 2 and 3 spatial dimensions, in one code path.

How it computes: the input is transposed once so that its spatial axes come
first, padded, and flattened into one row per pixel. A gather of rows, with
indices computed in numpy from the static shapes, builds the patches of a
group of output positions, position-major, and one batched matmul contracts
them with those positions' kernels. Small problems (and batch 1) take all
positions in one gather and one matmul; larger ones go through the positions
in chunks whose patches fit in a few MB, so that they stay in cache and the
memory they need is bounded (the patches are rebuilt, not stored, for the
backward pass). The number of ops grows neither with the kernel size nor
with the number of positions; `_compute` and docs/performance.md give the
measurements behind each choice.
"""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops as kops

from keras_localconn import _arguments, _shapes
from keras_localconn._transpose import local_conv_transpose

__all__ = [
    "local_conv",
    "local_conv_kernel_shape",
    "local_conv_output_shape",
    "local_conv_padding",
    "local_conv_transpose",
]


# --------------------------------------------------------------------------
# Static shapes (public helpers over `_shapes`, with their arguments checked)
# --------------------------------------------------------------------------


def _geometry(
    spatial_shape, channels, kernel_size, strides, padding, dilation_rate, owner
):
    rank = len(spatial_shape)
    kernel_size, strides, padding, dilation_rate = _arguments.normalize_geometry(
        rank, kernel_size, strides, padding, dilation_rate, owner
    )
    return _shapes.geometry(
        tuple(spatial_shape),
        channels,
        kernel_size,
        strides,
        padding,
        dilation_rate,
        owner,
    )


def local_conv_padding(
    spatial_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence = "valid",
    dilation_rate: int | Sequence[int] = 1,
) -> tuple[tuple[int, int], ...]:
    """Per-axis ``(before, after)`` padding that `local_conv` applies.

    ``"valid"``: none. ``"same"``: output length ``ceil(n / stride)``, with
    the total padding split as `keras.layers.Conv*D` split it (the smaller
    half before). ``"circular"``: the amounts of ``"same"`` (filled from the
    opposite edge rather than with zeros). ``"causal"`` (1D):
    ``(kernel_size - 1) * dilation_rate`` before, none after. Explicit
    padding (an int, N ints or N ``(before, after)`` pairs, as
    `keras.layers.ZeroPadding*D` takes it) is returned as pairs.

    >>> from keras_localconn.ops import local_conv_padding
    >>> local_conv_padding((6, 5), kernel_size=3, strides=2, padding="same")
    ((0, 1), (1, 1))
    """
    geo = _geometry(
        spatial_shape,
        1,
        kernel_size,
        strides,
        padding,
        dilation_rate,
        "local_conv_padding",
    )
    return geo.pads


def local_conv_output_shape(
    spatial_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence = "valid",
    dilation_rate: int | Sequence[int] = 1,
) -> tuple[int, ...]:
    """Output spatial shape of a local convolution over `spatial_shape`.

    Raises a `ValueError` naming the dimension when an output size is <= 0.

    >>> from keras_localconn.ops import local_conv_output_shape
    >>> local_conv_output_shape((63, 63), kernel_size=9)
    (55, 55)
    """
    geo = _geometry(
        spatial_shape,
        1,
        kernel_size,
        strides,
        padding,
        dilation_rate,
        "local_conv_output_shape",
    )
    return geo.output_shape


def local_conv_kernel_shape(
    output_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    channels: int,
    filters: int,
) -> tuple[int, int, int]:
    """The kernel shape ``(P, K, filters)`` for the given output spatial shape.

    >>> from keras_localconn.ops import local_conv_kernel_shape
    >>> local_conv_kernel_shape((55, 55), kernel_size=9, channels=16, filters=16)
    (3025, 1296, 16)
    """
    owner = "local_conv_kernel_shape"
    output_shape = _arguments.normalize_tuple(
        output_shape, len(output_shape), "output_shape", owner
    )
    kernel_size = _arguments.normalize_tuple(
        kernel_size, len(output_shape), "kernel_size", owner
    )
    channels = _arguments.normalize_positive_int(channels, "channels", owner)
    filters = _arguments.normalize_positive_int(filters, "filters", owner)
    return (math.prod(output_shape), math.prod(kernel_size) * channels, filters)


# --------------------------------------------------------------------------
# The computation
# --------------------------------------------------------------------------


def local_conv(
    inputs: Any,
    kernel: Any,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence = "valid",
    dilation_rate: int | Sequence[int] = 1,
    data_format: str | None = None,
) -> Any:
    """Locally connected N-D convolution (unshared weights), without bias.

    Like `keras.ops.conv`, except that every output position has its own
    filters. Works for 1, 2 and 3 spatial dimensions on every Keras backend.

    Args:
        inputs: Tensor of rank N + 2, ``(batch, *spatial, channels)`` if
            `data_format` is ``"channels_last"`` or ``(batch, channels,
            *spatial)`` if ``"channels_first"``. Spatial sizes must be static.
        kernel: Tensor of shape ``(P, K, filters)``: ``P`` is the product of
            the output spatial sizes (row-major order of output positions),
            ``K = prod(kernel_size) * channels``, ordered (kernel offsets...,
            channel) for ``channels_last`` and (channel, kernel offsets...)
            for ``channels_first``; the layout of Keras 2's
            ``LocallyConnected*D(implementation=1)``.
        kernel_size: int or tuple of N ints, the receptive field size.
        strides: int or tuple of N ints. Defaults to 1.
        padding: ``"valid"``, ``"same"``, ``"circular"``, (1D only)
            ``"causal"``, case-insensitive, or explicit zero padding. Output
            sizes and the split of ``same`` padding are those of
            `keras.layers.Conv*D`. ``"circular"`` pads as ``"same"`` does but
            with values from the opposite edge (a periodic boundary, as on a
            longitude grid; pads larger than the axis wrap around again).
            Explicit zero padding is given the way
            `keras.layers.ZeroPadding2D` takes it: an int (every side), a
            tuple of N ints (symmetric per axis) or a tuple of N
            ``(before, after)`` pairs; in 1D also one ``(before, after)``
            pair, as `keras.layers.ZeroPadding1D` takes it.
        dilation_rate: int or tuple of N ints. Defaults to 1. Strides > 1 and
            dilation > 1 cannot be combined on one axis.
        data_format: ``"channels_last"``, ``"channels_first"`` or None
            (`keras.config.image_data_format()`).

    Returns:
        Tensor of rank N + 2: ``(batch, *out, filters)`` for
        ``channels_last``, ``(batch, filters, *out)`` for ``channels_first``,
        in the dtype of `inputs` and `kernel` (cast them to one dtype first).

    Example:

    >>> import numpy as np
    >>> from keras_localconn.ops import local_conv
    >>> x = np.ones((2, 5, 3), "float32")        # batch 2, length 5, 3 channels
    >>> kernel = np.ones((3, 3 * 3, 4), "float32")  # 3 positions, K=3*3, 4 filters
    >>> y = local_conv(x, kernel, kernel_size=3)
    >>> tuple(y.shape)
    (2, 3, 4)
    >>> float(y[0, 0, 0])
    9.0
    """
    return _local_conv(
        inputs, kernel, kernel_size, strides, padding, dilation_rate, data_format
    )


def _local_conv(
    inputs,
    kernel,
    kernel_size,
    strides=1,
    padding="valid",
    dilation_rate=1,
    data_format=None,
    bias=None,
    owner="local_conv",
    chunk=None,
    batch_before_channels=None,
):
    """`local_conv`, plus an optional `(P, filters)` bias added in place.

    The layers pass their bias here so that it is added while the result is
    still position-major, before the final transpose. `chunk` and
    `batch_before_channels` pick a formulation (see `_compute`); the default
    chooses by shape and backend.
    """
    input_shape = tuple(inputs.shape)
    rank = len(input_shape) - 2
    if rank not in (1, 2, 3):
        raise ValueError(
            f"{owner}: `inputs` must have rank 3, 4 or 5 (batch, 1 to 3 spatial "
            f"dimensions, channels). Received inputs of shape {input_shape}"
        )
    data_format = _arguments.normalize_data_format(data_format, owner)
    spatial_shape, channels = _shapes.split_input_shape(input_shape, data_format)
    if any(n is None for n in spatial_shape) or channels is None:
        raise ValueError(
            f"{owner}: the spatial dimensions and the channel dimension of "
            f"`inputs` must be known. Received inputs of shape {input_shape} "
            f"(data_format='{data_format}')"
        )
    geo = _geometry(
        spatial_shape, channels, kernel_size, strides, padding, dilation_rate, owner
    )
    kernel_shape = tuple(kernel.shape)
    if len(kernel_shape) != 3 or kernel_shape[:2] != geo.kernel_shape(None)[:2]:
        raise ValueError(
            f"{owner}: `kernel` must have shape (P, K, filters) = "
            f"({geo.num_positions}, {geo.patch_size}, filters) for inputs of "
            f"shape {input_shape}, kernel_size={geo.kernel_size}, "
            f"strides={geo.strides}, padding={padding!r}, "
            f"dilation_rate={geo.dilation_rate} (P = prod of output shape "
            f"{geo.output_shape}, K = prod(kernel_size) * {channels} channels). "
            f"Received kernel of shape {kernel_shape}"
        )
    for name, tensor in (("inputs", inputs), ("kernel", kernel)):
        # Every backend's matmul takes bool operands and returns a logical
        # or-of-ands, which is no convolution: refuse rather than mislead.
        if keras.backend.standardize_dtype(tensor.dtype) == "bool":
            raise ValueError(
                f"{owner}: `{name}` must have a numeric dtype (float16, "
                f"bfloat16, float32, float64 or an integer type); local_conv "
                f"multiplies and sums. Received {name} of dtype bool; cast "
                f"it first, e.g. keras.ops.cast({name}, 'float32')"
            )
    return _compute(
        inputs,
        kernel,
        bias,
        geo,
        data_format == "channels_last",
        chunk=chunk,
        batch_before_channels=batch_before_channels,
    )


# Patches are built and contracted in chunks of output positions so that a
# chunk's patches (positions x K x batch) stay in cache instead of making a
# round trip to memory (at batch 32 on DeepFace's L4 all patches at once are
# 2x the kernel's 239 MB), and so that no more than about this many bytes of
# patches exist at once, in the forward and in the backward pass. Measured
# (one thread, CPU time, L4): chunks are 2-4x faster from batch 8 on; at
# batch 1 the patches are 1/filters of the kernel and one gather and one
# matmul for all positions is fastest.
_CHUNK_BYTES = 4 * 2**20
_ASSUMED_BATCH = 32


class _BackendChoice(NamedTuple):
    batch_before_channels: bool  # input rows of (batch, channels)
    loop_by_map: bool  # chunks through keras.ops.map, else unstack + loop
    remat: bool  # patches rebuilt in the backward pass, not kept
    chunk_above_kernel: bool  # chunks only once patches outweigh the kernel


# What differs by backend, measured on L4 (wall clock, 2 threads, medians of
# interleaved runs, one process per backend; forward ms at batch 8 / 32):
#
#                      all at once      chunks: map      chunks: unstack loop
#   rows of            (B,C)   (C,B)    (B,C)            (B,C)     (C,B)
#   jax               119/371 134/536  180/154          187/319   235/525
#   tensorflow        235/916 194/636  204/466           90/286    87/246
#   torch             183/663  93/313  133/294          109/230    45/184
#
# - jax: XLA fuses the transpose of (B, C) rows into the gather, and runs
#   keras.ops.map as one compiled loop; chunks pay off only once the patches
#   outweigh the kernel (batch 32 here, not 8).
# - tensorflow and torch: (C, B) rows, whose (c, K, B) patches the batched
#   matmul reads transposed in place, and a Python loop over unstacked kernel
#   chunks (under torch keras.ops.map indexes the stacked chunks, so its
#   backward pass writes a kernel-sized zero gradient per chunk: 26 s
#   against 2 s for a training step).
# - rematerialising the patches for the backward pass (keras.remat) made the
#   training step at batch 32 faster and half as large on jax (0.96 s
#   against 1.9 s, one thread) and as fast on tensorflow (1.46 s against
#   1.49 s); under torch it cost 30% more time for the same memory.
_BACKEND_CHOICES = {
    "jax": _BackendChoice(True, True, True, True),
    "tensorflow": _BackendChoice(False, False, True, False),
    "torch": _BackendChoice(False, False, False, False),
}
_DEFAULT_CHOICE = _BackendChoice(True, True, True, True)


def _padded_spatial_first(inputs, geo, channels_last, batch_before_channels):
    """`inputs` as ``(*padded_spatial, channels, batch)``, padded per `geo`.

    With `batch_before_channels`, ``(*padded_spatial, batch, channels)``.
    The one place where padding is applied: every formulation starts here.
    """
    rank = geo.rank
    spatial = range(1, rank + 1) if channels_last else range(2, rank + 2)
    channel_axis = rank + 1 if channels_last else 1
    trailing = (0, channel_axis) if batch_before_channels else (channel_axis, 0)
    x = kops.transpose(inputs, (*spatial, *trailing))
    if not any(lo or hi for lo, hi in geo.pads):
        return x
    if geo.pad_mode == "zeros":
        return kops.pad(x, (*geo.pads, (0, 0), (0, 0)))
    # Circular: one gather per padded axis, of indices wrapped in numpy (any
    # pad size, the input repeating periodically); keras.ops.pad's "wrap"
    # mode is not available on every backend.
    for axis, (n, (lo, hi)) in enumerate(zip(geo.spatial_shape, geo.pads)):
        if lo or hi:
            wrapped = (np.arange(-lo, n + hi) % n).astype("int32")
            x = kops.take(x, wrapped, axis=axis)
    return x


def _contract(x_rows, rows, kernel, geo, channels_last, batch_before_channels):
    """``(c, batch, filters)`` for `c` positions: patches, then one matmul.

    `x_rows` is the padded input with one row per pixel, `rows` the ``c *
    taps`` rows the positions read and `kernel` their ``(c, K, filters)``.
    """
    positions = kernel.shape[0]
    patches = kops.take(x_rows, rows, axis=0)  # (c * taps, ...trailing)
    if batch_before_channels:  # (c, taps, B, C) -> (c, B, K)
        patches = kops.reshape(patches, (positions, geo.taps, -1, geo.channels))
        order = (0, 2, 1, 3) if channels_last else (0, 2, 3, 1)
        patches = kops.transpose(patches, order)
        patches = kops.reshape(patches, (positions, -1, geo.patch_size))
        return kops.matmul(patches, kernel)
    if channels_last:  # (c, taps, C, B) is (c, K, B) already
        patches = kops.reshape(patches, (positions, geo.patch_size, -1))
    else:  # K ordered (channel, offsets)
        patches = kops.reshape(patches, (positions, geo.taps, geo.channels, -1))
        patches = kops.transpose(patches, (0, 2, 1, 3))
        patches = kops.reshape(patches, (positions, geo.patch_size, -1))
    return kops.matmul(kops.transpose(patches, (0, 2, 1)), kernel)


def _chunk_positions(geo, batch, itemsize, filters, above_kernel=False):
    """Output positions per chunk, or None for all positions at once.

    An unknown or symbolic batch size (a graph traced or exported for any
    batch) is taken to be 32. With `above_kernel`, only patches larger than
    the kernel are chunked.
    """
    if not isinstance(batch, (int, np.integer)):
        batch = _ASSUMED_BATCH
    per_position = geo.patch_size * batch * itemsize
    patches = geo.num_positions * per_position
    if batch == 1 or patches <= _CHUNK_BYTES:
        return None
    if above_kernel and batch <= filters:  # patches / kernel = batch / filters
        return None
    return max(1, min(geo.num_positions, _CHUNK_BYTES // per_position))


def _compute(
    inputs, kernel, bias, geo, channels_last, chunk=None, batch_before_channels=None
):
    """Every patch contracted with its position's kernel: ``(B, *out, F)``.

    `chunk`: positions per chunk; None chooses by size (`_chunk_positions`),
    0 forces all positions at once. `batch_before_channels`: the row layout;
    None chooses by backend. The tests run every formulation on every backend.
    """
    choice = _BACKEND_CHOICES.get(keras.backend.backend(), _DEFAULT_CHOICE)
    if batch_before_channels is None:
        batch_before_channels = choice.batch_before_channels
    x = _padded_spatial_first(inputs, geo, channels_last, batch_before_channels)
    # One row per pixel: (batch, channels), or channels * batch values in
    # one contiguous row, which torch's gather copies whole (2x faster).
    num_pixels = math.prod(geo.padded_shape)
    if batch_before_channels:
        x_rows = kops.reshape(x, (num_pixels, -1, geo.channels))
    else:
        x_rows = kops.reshape(x, (num_pixels, -1))
    rows = _shapes.gather_rows(geo)
    num_positions, filters = geo.num_positions, kernel.shape[-1]
    if chunk is None:
        itemsize = np.dtype(keras.backend.standardize_dtype(inputs.dtype)).itemsize
        chunk = _chunk_positions(
            geo, inputs.shape[0], itemsize, filters, choice.chunk_above_kernel
        )
    args = (geo, channels_last, batch_before_channels)
    if not chunk or chunk >= num_positions:
        outputs = _contract(x_rows, rows, kernel, *args)
    else:
        # `count` chunks of `chunk` positions, mapped over with the kernel
        # viewed as (count, chunk, K, F) (a slice inside the loop would cost
        # a kernel-sized gradient per chunk), then the remaining positions.
        count = num_positions // chunk
        covered = count * chunk
        rows = rows.reshape(num_positions, -1)
        kernel_chunks = kops.reshape(
            kernel[:covered], (count, chunk, geo.patch_size, filters)
        )

        def contract(x_rows, rows_i, kernel_i):
            return _contract(x_rows, rows_i, kernel_i, *args)

        if choice.remat:
            # The input is an argument, not a closure: TensorFlow's
            # recompute_grad differentiates with respect to arguments only.
            contract = keras.remat(contract)

        def one_chunk(chunk_args):
            return contract(x_rows, *chunk_args)

        chunk_rows = kops.convert_to_tensor(rows[:covered].reshape(count, -1))
        if choice.loop_by_map:
            outputs = kops.map(one_chunk, (chunk_rows, kernel_chunks))
        else:
            outputs = kops.stack(
                [
                    one_chunk(pair)
                    for pair in zip(
                        kops.unstack(chunk_rows), kops.unstack(kernel_chunks)
                    )
                ]
            )  # (count, chunk, B, F)
        outputs = kops.reshape(outputs, (covered, -1, filters))
        if covered < num_positions:
            rest = _contract(x_rows, rows[covered:].ravel(), kernel[covered:], *args)
            outputs = kops.concatenate([outputs, rest], axis=0)
    # outputs: (P, B, F)
    if bias is not None:
        outputs = outputs + kops.expand_dims(bias, 1)
    if channels_last:  # (P, B, F) -> (B, P, F) -> (B, *out, F)
        outputs = kops.transpose(outputs, (1, 0, 2))
        return kops.reshape(outputs, (-1, *geo.output_shape, filters))
    outputs = kops.transpose(outputs, (1, 2, 0))  # (B, F, P)
    return kops.reshape(outputs, (-1, filters, *geo.output_shape))
