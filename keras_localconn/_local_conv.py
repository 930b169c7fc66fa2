"""The forward engine: locally connected convolution on `keras.ops`.

A locally connected layer is a convolution whose kernel gains a leading
*positions* axis: output position ``p`` has its own ``(K, filters)`` matrix.

How it computes: the input is transposed once so that its spatial axes come
first, padded, and flattened into one row per pixel. A gather of rows, with
indices computed in numpy from the static shapes (`_shapes.gather_rows`),
builds the patches of a group of output positions, position-major, and one
batched matmul contracts them with those positions' kernels. Either all
positions go at once (`_all_at_once`, differentiated by the backend) or they
go in chunks (`_chunked`, with its own backward pass, `_chunked_backward`);
the `_schedule.Formulation` of the call says which, and how. The number of
ops grows neither with the kernel size nor with the number of positions (a
Python loop over at most `_schedule.MAX_UNROLLED` chunks aside).
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from keras_localconn import _arguments, _schedule, _shapes, _transpose

# The backends that take gradients: the numpy backend has none.
_DIFFERENTIABLE = ("jax", "tensorflow", "torch")


class EncodedKernel(NamedTuple):
    """A kernel stored encoded (quantized, packed), decoded one slice at a time.

    `parts` are tensors whose leading axis is the kernel's positions axis;
    `decode(*slices)` turns equal slices of them (any ``c`` leading rows) into
    the ``(c, K, filters)`` kernel those rows stand for, in the compute dtype.
    `shape` is the decoded kernel's ``(P, K, filters)``. The engine decodes
    only the slice a chunk needs, so that the encoded kernel is what is read
    from memory; gradients flow to the inputs only (an encoded kernel is not
    trained).
    """

    parts: tuple
    decode: Callable[..., Any]
    shape: tuple

    @property
    def dtype(self):
        return self.parts[0].dtype

    def rows(self, start, size):
        """The decoded kernel of positions ``start..start+size-1``."""
        return self.decode(*(_slice(part, start, size) for part in self.parts))


def _kernel_rows(kernel, start, size):
    """Positions ``start..start+size-1`` of a kernel, decoded if encoded."""
    if isinstance(kernel, EncodedKernel):
        return kernel.rows(start, size)
    return _slice(kernel, start, size)


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
    `kernel` may be an `EncodedKernel`, decoded one chunk at a time.
    """
    geo, channels_last = checked_geometry(
        inputs, kernel, kernel_size, strides, padding, dilation_rate, data_format, owner
    )
    encoded = isinstance(kernel, EncodedKernel)
    if formulation is None:
        formulation = _schedule.formulation(
            geo, inputs.shape[0], inputs.dtype, kernel.shape[-1], decoded=encoded
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


def _patches(x_rows, rows, positions, geo, channels_last, batch_before_channels):
    """The patches of `positions` output positions, ready for a batched matmul.

    `rows` are the ``positions * taps`` rows of `x_rows` they read. Returns
    ``(c, batch, K)`` with `batch_before_channels`, else ``(c, K, batch)``;
    `_to_rows` is its inverse.
    """
    patches = ops.take(x_rows, rows, axis=0)  # (c * taps, ...trailing)
    if batch_before_channels:  # (c, taps, B, C) -> (c, B, K)
        patches = ops.reshape(patches, (positions, geo.taps, -1, geo.channels))
        order = (0, 2, 1, 3) if channels_last else (0, 2, 3, 1)
        patches = ops.transpose(patches, order)
        return ops.reshape(patches, (positions, -1, geo.patch_size))
    if channels_last:  # (c, taps, C, B) is (c, K, B) already
        return ops.reshape(patches, (positions, geo.patch_size, -1))
    # K ordered (channel, offsets)
    patches = ops.reshape(patches, (positions, geo.taps, geo.channels, -1))
    patches = ops.transpose(patches, (0, 2, 1, 3))
    return ops.reshape(patches, (positions, geo.patch_size, -1))


def _to_rows(values, geo, channels_last, batch_before_channels):
    """Values laid out as `_patches` returns them, as rows of `x_rows`."""
    positions = values.shape[0]
    if batch_before_channels:  # (c, B, K) -> (c, taps, B, C)
        if channels_last:
            values = ops.reshape(values, (positions, -1, geo.taps, geo.channels))
            values = ops.transpose(values, (0, 2, 1, 3))
        else:
            values = ops.reshape(values, (positions, -1, geo.channels, geo.taps))
            values = ops.transpose(values, (0, 3, 1, 2))
        return ops.reshape(values, (positions * geo.taps, -1, geo.channels))
    if not channels_last:  # (c, C, taps, B) -> (c, taps, C, B)
        values = ops.reshape(values, (positions, geo.channels, geo.taps, -1))
        values = ops.transpose(values, (0, 2, 1, 3))
    return ops.reshape(values, (positions * geo.taps, -1))


def _contract(patches, kernel, batch_before_channels):
    """``(c, batch, filters)``: the patches times their positions' kernels."""
    if not batch_before_channels:
        patches = ops.transpose(patches, (0, 2, 1))
    return ops.matmul(patches, kernel)


def _all_at_once(x_rows, kernel, geo, channels_last, formulation):
    """``(P, batch, filters)``: every patch in one gather, one matmul.

    The backend differentiates it: its patches fit the budget of the
    schedule, and its backward pass has one gather to transpose.
    """
    layout = formulation.batch_before_channels
    rows = _shapes.gather_rows(geo)
    patches = _patches(x_rows, rows, geo.num_positions, geo, channels_last, layout)
    return _contract(patches, _kernel_rows(kernel, 0, geo.num_positions), layout)


class _Chunks:
    """The static plan of a chunked call: which positions each chunk holds.

    Every chunk has `size` consecutive positions; chunk ``i`` starts at
    ``min(i * size, P - size)``, so that the last one, where `size` does not
    divide P, overlaps the one before by `overlap` positions instead of
    being shorter. The kernel and the output cotangent are sliced per chunk,
    never copied into chunks.
    """

    def __init__(self, geo, size, loop_by_map):
        self.geo, self.size, self.loop_by_map = geo, size, loop_by_map
        num_positions = geo.num_positions
        self.count = math.ceil(num_positions / size)
        self.starts = np.minimum(np.arange(self.count) * size, num_positions - size)
        self.overlap = self.count * size - num_positions
        positions = self.starts[:, None] + np.arange(size)
        taps = _shapes.gather_rows(geo).reshape(num_positions, geo.taps)
        self.rows = taps[positions].reshape(self.count, -1)  # (count, size * taps)

    def unique(self, stacked):
        """``(count * size, ...)`` values per chunk position, as ``(P, ...)``."""
        if not self.overlap:
            return stacked
        tail = (self.count - 1) * self.size
        return ops.concatenate([stacked[:tail], stacked[tail + self.overlap :]], axis=0)

    def map(self, step):
        """`step(start, rows)` for every chunk, each result stacked and
        flattened to ``(count * size, ...)``."""
        if self.loop_by_map:
            starts = ops.convert_to_tensor(self.starts.astype("int32"))
            rows = ops.convert_to_tensor(self.rows)
            results = ops.map(lambda pair: step(*pair), (starts, rows))
        else:
            per_chunk = [
                step(int(start), rows) for start, rows in zip(self.starts, self.rows)
            ]
            results = tuple(ops.stack(parts) for parts in zip(*per_chunk))
        # ops.shape: the batch may be unknown while tracing (TensorFlow).
        return tuple(ops.reshape(r, (-1, *ops.shape(r)[2:])) for r in results)


@functools.lru_cache(maxsize=64)
def _chunks(geo, size, loop_by_map):
    """The `_Chunks` of a geometry, built once: a layer called eagerly (torch)
    would otherwise index its row table anew on every call."""
    return _Chunks(geo, size, loop_by_map)


def _slice(values, start, size):
    """Positions ``start..start+size-1`` of ``(P, ...)`` values; `start` may
    be a tensor (inside `keras.ops.map`)."""
    if isinstance(start, int):
        return values[start : start + size]
    shape = ops.shape(values)
    return ops.slice(values, (start, *[0] * (len(shape) - 1)), (size, *shape[1:]))


def _chunked(x_rows, kernel, geo, channels_last, formulation):
    """``(P, batch, filters)``, `formulation.chunk` positions at a time.

    Its gradient is `_chunked_backward`, one more pass over the chunks: the
    backend's own would write an input-sized gradient per chunk and keep (or
    recompute the matmul of) every chunk's patches.
    """
    layout = formulation.batch_before_channels
    chunks = _chunks(geo, formulation.chunk, formulation.loop_by_map)

    def forward(x_rows, kernel):
        def step(start, rows):
            patches = _patches(x_rows, rows, chunks.size, geo, channels_last, layout)
            kernel_rows = _kernel_rows(kernel, start, chunks.size)
            return (_contract(patches, kernel_rows, layout),)

        (outputs,) = chunks.map(step)
        return chunks.unique(outputs)

    if keras.backend.backend() not in _DIFFERENTIABLE:
        return forward(x_rows, kernel)

    if isinstance(kernel, EncodedKernel):
        # Its parts are arguments (None is their gradient), as Keras' own
        # quantized layers pass theirs: TensorFlow refuses variables read
        # inside, and JAX tracers closed over.
        decode, shape = kernel.decode, kernel.shape

        @ops.custom_gradient
        def encoded_contraction(x_rows, *parts):
            encoded = EncodedKernel(parts, decode, shape)

            def gradient(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                d_x_rows = _input_gradient(
                    x_rows, encoded, upstream, chunks, channels_last, formulation
                )
                return (d_x_rows, *[None] * len(parts))

            return forward(x_rows, encoded), gradient

        parts = [ops.reshape(part, part.shape) for part in kernel.parts]
        return encoded_contraction(x_rows, *parts)

    @ops.custom_gradient
    def contraction(x_rows, kernel):
        def gradient(*args, upstream=None):
            if upstream is None:  # JAX and TensorFlow pass it positionally
                (upstream,) = args
            return _chunked_backward(
                x_rows, kernel, upstream, chunks, channels_last, formulation
            )

        return forward(x_rows, kernel), gradient

    # A tensor, not the variable (a reshape reads it, copying nothing):
    # TensorFlow's custom_gradient refuses functions that read variables.
    return contraction(x_rows, ops.reshape(kernel, kernel.shape))


def _chunked_backward(x_rows, kernel, upstream, chunks, channels_last, formulation):
    """``(d x_rows, d kernel)`` of `_chunked` for the cotangent `upstream`.

    The kernel gradient takes one pass over the chunks: each rebuilds its
    patches (one gather) and multiplies them by its cotangent. The input
    gradient is `_input_gradient`'s.
    """
    geo, size = chunks.geo, chunks.size
    layout = formulation.batch_before_channels

    def kernel_gradient(start, rows):
        patches = _patches(x_rows, rows, size, geo, channels_last, layout)
        cotangent = _slice(upstream, start, size)  # (c, B, F)
        if layout:  # patches (c, B, K)
            patches = ops.transpose(patches, (0, 2, 1))
        return (ops.matmul(patches, cotangent),)  # (c, K, F)

    (d_kernel,) = chunks.map(kernel_gradient)
    d_x_rows = _input_gradient(
        x_rows, kernel, upstream, chunks, channels_last, formulation
    )
    return d_x_rows, chunks.unique(d_kernel)


def _input_gradient(x_rows, kernel, upstream, chunks, channels_last, formulation):
    """``d x_rows`` of `_chunked` for the cotangent `upstream`.

    It needs no patches: the cotangent times the kernel gives every
    (position, offset)'s contribution, one batched matmul per group of
    `formulation.group` chunks' positions, added into the input gradient with
    one scatter-add (or segment sum) per group. No matmul of the forward pass
    is recomputed, no input-sized tensor is written per chunk, and no
    chunk's contributions are stacked or copied.
    """
    geo, size = chunks.geo, chunks.size
    layout = formulation.batch_before_channels
    scatter_add = formulation.scatter_add
    if scatter_add is None:
        scatter_add = _transpose.HAS_SCATTER_ADD
    num_rows, num_positions = math.prod(geo.padded_shape), geo.num_positions
    all_rows = _shapes.gather_rows(geo)
    d_x_rows = ops.zeros((num_rows, *ops.shape(x_rows)[1:]), x_rows.dtype)
    step = (formulation.group or chunks.count) * size
    for first in range(0, num_positions, step):
        last = min(first + step, num_positions)
        cotangent = upstream[first:last]
        kernel_g = _kernel_rows(kernel, first, last - first)
        if layout:  # (n, B, F) @ (n, F, K) -> (n, B, K)
            contributions = ops.matmul(cotangent, ops.transpose(kernel_g, (0, 2, 1)))
        else:  # (n, K, F) @ (n, F, B) -> (n, K, B)
            contributions = ops.matmul(kernel_g, ops.transpose(cotangent, (0, 2, 1)))
        contributions = _to_rows(contributions, geo, channels_last, layout)
        rows = all_rows[first * geo.taps : last * geo.taps]
        if scatter_add:
            d_x_rows = ops.scatter_update(
                d_x_rows, rows[:, None], contributions, reduction="add"
            )
        else:
            d_x_rows = d_x_rows + ops.segment_sum(
                contributions, ops.convert_to_tensor(rows), num_segments=num_rows
            )
    return d_x_rows


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
