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

With `position_groups` (`_groups`), positions that share a kernel are the
rows of one matmul: the engine works on *units* of `_groups.Plan.per_unit`
positions (one, ungrouped), each unit's patches ``per_unit * batch`` rows of
one matmul with its group's kernel. One group is a convolution, computed by
`keras.ops.conv` (`_one_group`).
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from keras_localconn import _arguments, _groups, _schedule, _shapes, _transpose

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

    `column_scale(*slices)`, where given, is a ``(c, filters)`` factor of the
    decoded kernel's columns that the forward pass applies to a chunk's
    outputs instead of to its kernel: `decode` then gives the kernel before
    it, and the forward pass multiplies ``batch * filters`` outputs a
    position rather than ``K * filters`` kernel values (`rows` applies it).
    """

    parts: tuple
    decode: Callable[..., Any]
    shape: tuple
    column_scale: Callable[..., Any] | None = None

    @property
    def dtype(self):
        return self.parts[0].dtype

    def slices(self, start, size):
        """The parts of positions ``start..start+size-1``."""
        return tuple(_slice(part, start, size) for part in self.parts)

    def rows(self, start, size):
        """The decoded kernel of positions ``start..start+size-1``."""
        slices = self.slices(start, size)
        kernel = self.decode(*slices)
        if self.column_scale is None:
            return kernel
        return kernel * ops.expand_dims(self.column_scale(*slices), 1)


def _kernel_rows(kernel, start, size):
    """Positions ``start..start+size-1`` of a kernel, decoded if encoded."""
    if isinstance(kernel, EncodedKernel):
        return kernel.rows(start, size)
    return _slice(kernel, start, size)


def _contract_rows(patches, kernel, start, size, per_unit):
    """`_contract` with the kernels of units ``start..start+size-1``; an
    encoded kernel's column scale multiplies the outputs."""
    if not isinstance(kernel, EncodedKernel) or kernel.column_scale is None:
        return _contract(patches, _kernel_rows(kernel, start, size), per_unit)
    slices = kernel.slices(start, size)
    outputs = _contract(patches, kernel.decode(*slices), per_unit)
    scale = kernel.column_scale(*slices)  # (size, F)
    if per_unit > 1:  # outputs: (size * per_unit, B, F)
        scale = ops.repeat(scale, per_unit, axis=0)
    return outputs * ops.expand_dims(scale, 1)


def _take_kernel(kernel, index):
    """The kernels of `index` (one per unit), encoded if `kernel` is."""
    count, index = len(index), ops.convert_to_tensor(index)
    if isinstance(kernel, EncodedKernel):
        parts = tuple(ops.take(part, index, axis=0) for part in kernel.parts)
        return kernel._replace(parts=parts, shape=(count, *kernel.shape[1:]))
    return ops.take(kernel, index, axis=0)


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
    position_groups=None,
    owner="local_conv",
    formulation=None,
):
    """`keras_localconn.ops.local_conv`, plus a bias and an explicit formulation.

    `bias`, ``(T, filters)`` (T = P without groups), is added while the
    result is still position-major, before the final transpose.
    `position_groups`: any form `_groups.resolve` takes. `formulation` (a
    `_schedule.Formulation`) overrides the default of `_schedule.formulation`.
    `kernel` may be an `EncodedKernel`, decoded one chunk at a time.
    """
    geo, channels_last, grouping = checked_geometry(
        inputs,
        kernel,
        kernel_size,
        strides,
        padding,
        dilation_rate,
        data_format,
        owner,
        position_groups,
    )
    encoded = isinstance(kernel, EncodedKernel)
    plan = _groups.plan_of(grouping, geo.num_positions)
    if formulation is None:
        formulation = _schedule.formulation(
            geo,
            inputs.shape[0],
            inputs.dtype,
            kernel.shape[-1],
            decoded=encoded,
            units=plan.units,
            per_unit=plan.per_unit,
        )
    if grouping is not None:
        if grouping.count == 1 and formulation.conv and _conv_takes(geo):
            return _one_group(inputs, kernel, bias, geo, channels_last)
        if bias is not None:  # (T, F) -> one row per position
            bias = ops.take(bias, grouping.groups.astype("int32"), axis=0)
        if plan.kernels is not None:  # at most 2 T kernels, never P
            kernel = _take_kernel(kernel, plan.kernels)
    x_rows = _input_rows(inputs, geo, channels_last, formulation)
    if formulation.chunk is None or formulation.chunk >= plan.units:
        outputs = _all_at_once(
            x_rows, kernel, geo, grouping, channels_last, formulation
        )
    else:
        outputs = _chunked(x_rows, kernel, geo, grouping, channels_last, formulation)
    return _output(outputs, bias, geo, channels_last)


def checked_geometry(
    inputs,
    kernel,
    kernel_size,
    strides,
    padding,
    dilation_rate,
    data_format,
    owner,
    position_groups=None,
):
    """`(geometry, channels_last, grouping)` of one call, every argument checked.

    What `local_conv` checks before it computes, and all that a symbolic call
    (`compute_output_spec`) needs. `grouping` is the call's
    `_groups.Grouping`, or None for one kernel per position.
    """
    data_format, spatial_shape, channels = _arguments.standardize_inputs(
        inputs, kernel, data_format, owner
    )
    geo = _arguments.standardize_geometry(
        spatial_shape, channels, kernel_size, strides, padding, dilation_rate, owner
    )
    grouping = _groups.resolve(position_groups, geo.output_shape, owner)
    kernel_shape = tuple(kernel.shape)
    kernels = geo.num_positions if grouping is None else grouping.count
    if len(kernel_shape) != 3 or kernel_shape[:2] != (kernels, geo.patch_size):
        count = (
            f"P = prod of output shape {geo.output_shape}"
            if grouping is None
            else f"T = {kernels} position groups"
        )
        raise ValueError(
            f"{owner}: `kernel` must have shape ({'P' if grouping is None else 'T'}"
            f", K, filters) = ({kernels}, {geo.patch_size}, filters) for inputs "
            f"of shape {tuple(inputs.shape)}, kernel_size={geo.kernel_size}, "
            f"strides={geo.strides}, padding={padding!r}, "
            f"dilation_rate={geo.dilation_rate} ({count}, K = prod(kernel_size) "
            f"* {channels} channels). Received kernel of shape {kernel_shape}"
        )
    return geo, data_format == "channels_last", grouping


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


def _pad_circular(x, geo, first_axis=0):
    """`x` (spatial axes from `first_axis` on) padded with values from the
    opposite edge.

    One gather per padded axis, of indices wrapped in numpy (any pad size, the
    input repeating periodically); `keras.ops.pad`'s "wrap" mode is not
    available on every backend.
    """
    for axis, (n, (lo, hi)) in enumerate(zip(geo.spatial_shape, geo.pads)):
        if lo or hi:
            wrapped = (np.arange(-lo, n + hi) % n).astype("int32")
            x = ops.take(x, wrapped, axis=first_axis + axis)
    return x


def _patches(
    x_rows,
    rows,
    units,
    per_unit,
    geo,
    channels_last,
    batch_before_channels,
    rows_first=False,
):
    """The patches of `units` units, ready for a batched matmul.

    `rows` are the ``units * per_unit * taps`` rows of `x_rows` they read.
    Returns ``(units, per_unit * batch, K)`` with `batch_before_channels` or
    `rows_first` (what the forward matmul takes), else ``(units, K,
    per_unit * batch)`` (what the kernel gradient takes); `_to_rows` is the
    inverse of the latter. Each layout costs one transpose of the patches.
    """
    patches = ops.take(x_rows, rows, axis=0)  # (n * taps, ...trailing)
    slots = units * per_unit
    if batch_before_channels:  # (n, taps, B, C) -> (n, B, K)
        patches = ops.reshape(patches, (slots, geo.taps, -1, geo.channels))
        order = (0, 2, 1, 3) if channels_last else (0, 2, 3, 1)
        patches = ops.transpose(patches, order)
        return ops.reshape(patches, (units, -1, geo.patch_size))
    if rows_first and channels_last:  # (n, K, B) -> (n, B, K)
        patches = ops.reshape(patches, (slots, geo.patch_size, -1))
        patches = ops.transpose(patches, (0, 2, 1))
        return ops.reshape(patches, (units, -1, geo.patch_size))
    if rows_first:  # (n, taps, C, B) -> (n, B, K ordered (channel, offsets))
        patches = ops.reshape(patches, (slots, geo.taps, geo.channels, -1))
        patches = ops.transpose(patches, (0, 3, 2, 1))
        return ops.reshape(patches, (units, -1, geo.patch_size))
    if channels_last:  # (n, taps, C, B) is (n, K, B) already
        patches = ops.reshape(patches, (slots, geo.patch_size, -1))
    else:  # K ordered (channel, offsets)
        patches = ops.reshape(patches, (slots, geo.taps, geo.channels, -1))
        patches = ops.transpose(patches, (0, 2, 1, 3))
        patches = ops.reshape(patches, (slots, geo.patch_size, -1))
    if per_unit == 1:
        return patches
    patches = ops.reshape(patches, (units, per_unit, geo.patch_size, -1))
    patches = ops.transpose(patches, (0, 2, 1, 3))
    return ops.reshape(patches, (units, geo.patch_size, -1))


def _to_rows(values, per_unit, geo, channels_last, batch_before_channels):
    """Values laid out as `_patches` returns them, as rows of `x_rows`."""
    slots = values.shape[0] * per_unit
    if batch_before_channels:  # (n, B, K) -> (n, taps, B, C)
        if channels_last:
            values = ops.reshape(values, (slots, -1, geo.taps, geo.channels))
            values = ops.transpose(values, (0, 2, 1, 3))
        else:
            values = ops.reshape(values, (slots, -1, geo.channels, geo.taps))
            values = ops.transpose(values, (0, 3, 1, 2))
        return ops.reshape(values, (slots * geo.taps, -1, geo.channels))
    if per_unit > 1:  # (n, K, m * B) -> (n * m, K, B)
        values = ops.reshape(
            values, (-1, geo.patch_size, per_unit, ops.shape(values)[-1] // per_unit)
        )
        values = ops.transpose(values, (0, 2, 1, 3))
    if not channels_last:  # (n, C, taps, B) -> (n, taps, C, B)
        values = ops.reshape(values, (slots, geo.channels, geo.taps, -1))
        values = ops.transpose(values, (0, 2, 1, 3))
    return ops.reshape(values, (slots * geo.taps, -1))


def _contract(patches, kernel, per_unit):
    """``(units * per_unit, batch, filters)``: the patches, ``(units,
    per_unit * batch, K)``, times their units' kernels."""
    outputs = ops.matmul(patches, kernel)  # (n, m * B, F)
    if per_unit == 1:
        return outputs
    return ops.reshape(
        outputs, (-1, ops.shape(outputs)[1] // per_unit, kernel.shape[-1])
    )


def _conv_takes(geo):
    """Whether `keras.ops.conv` computes `geo` on every backend: TensorFlow
    refuses strides > 1 with dilation > 1, even on different axes."""
    return max(geo.strides) == 1 or max(geo.dilation_rate) == 1


def _one_group(inputs, kernel, bias, geo, channels_last):
    """`local_conv`'s result with one kernel (and bias, ``(1, filters)``)
    shared by every position: a convolution, computed by `keras.ops.conv` in
    channels_last (which every backend runs on a CPU) after this engine's own
    padding."""
    kernel = _kernel_rows(kernel, 0, 1)[0]  # (K, F)
    rank = geo.rank
    if channels_last:  # K ordered (offsets..., channel)
        kernel = ops.reshape(kernel, (*geo.kernel_size, geo.channels, -1))
        x = inputs
    else:  # (channel, offsets...)
        kernel = ops.reshape(kernel, (geo.channels, *geo.kernel_size, -1))
        kernel = ops.moveaxis(kernel, 0, -2)
        x = ops.transpose(inputs, (0, *range(2, rank + 2), 1))
    if any(lo or hi for lo, hi in geo.pads):
        if geo.pad_mode == "zeros":
            x = ops.pad(x, ((0, 0), *geo.pads, (0, 0)))
        else:
            x = _pad_circular(x, geo, first_axis=1)
    outputs = ops.conv(
        x,
        ops.cast(kernel, x.dtype),
        strides=geo.strides,
        padding="valid",
        data_format="channels_last",
        dilation_rate=geo.dilation_rate,
    )
    if bias is not None:
        outputs = outputs + ops.reshape(bias, (-1,))
    if channels_last:
        return outputs
    return ops.transpose(outputs, (0, rank + 1, *range(1, rank + 1)))


@functools.lru_cache(maxsize=64)
def _unit_rows(geo, grouping):
    """The rows of `x_rows` every unit's patches read, unit by unit:
    ``(units * per_unit * taps,)``."""
    rows = _shapes.gather_rows(geo)
    if grouping is None:
        return rows
    slots = grouping.plan().slots
    return rows.reshape(geo.num_positions, geo.taps)[slots].reshape(-1)


def _all_at_once(x_rows, kernel, geo, grouping, channels_last, formulation):
    """``(P, batch, filters)``: every patch in one gather, one matmul.

    The backend differentiates it: its patches fit the budget of the
    schedule, and its backward pass has one gather to transpose.
    """
    layout = formulation.batch_before_channels
    plan = _groups.plan_of(grouping, geo.num_positions)
    rows = _unit_rows(geo, grouping)
    patches = _patches(
        x_rows, rows, plan.units, plan.per_unit, geo, channels_last, layout, True
    )
    outputs = _contract_rows(patches, kernel, 0, plan.units, plan.per_unit)
    return _positions(outputs, plan)


def _positions(rows, plan):
    """``(P, batch, filters)``: `plan`'s rows of outputs as output positions,
    padding rows dropped."""
    if plan.order is None:
        return rows
    return ops.take(rows, plan.order, axis=0)


def _rows(upstream, plan):
    """The cotangent of `_positions`: ``(units * per_unit, batch, filters)``,
    zero at padding rows."""
    if plan.order is None:
        return upstream
    zero = ops.zeros_like(upstream[:1])
    return ops.take(ops.concatenate([upstream, zero], axis=0), plan.fill, axis=0)


class _Chunks:
    """The static plan of a chunked call: which units each chunk holds.

    Every chunk has `size` consecutive units (positions, ungrouped); chunk
    ``i`` starts at ``min(i * size, units - size)``, so that the last one,
    where `size` does not divide the units, overlaps the one before by
    `overlap` units instead of being shorter. The kernel and the output
    cotangent are sliced per chunk, never copied into chunks.
    """

    def __init__(self, geo, grouping, size, loop_by_map):
        self.geo, self.size, self.loop_by_map = geo, size, loop_by_map
        self.grouping = grouping
        plan = _groups.plan_of(grouping, geo.num_positions)
        self.units, self.per_unit = plan.units, plan.per_unit
        self.count = math.ceil(self.units / size)
        self.starts = np.minimum(np.arange(self.count) * size, self.units - size)
        self.overlap = self.count * size - self.units
        units = self.starts[:, None] + np.arange(size)
        rows = _unit_rows(geo, grouping).reshape(self.units, -1)
        self.rows = rows[units].reshape(self.count, -1)  # (count, size * m * taps)

    def unique(self, stacked, per_unit=1):
        """``(count * size * per_unit, ...)`` values per chunk row, as
        ``(units * per_unit, ...)``."""
        if not self.overlap:
            return stacked
        tail = (self.count - 1) * self.size * per_unit
        overlap = self.overlap * per_unit
        return ops.concatenate([stacked[:tail], stacked[tail + overlap :]], axis=0)

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
def _chunks(geo, grouping, size, loop_by_map):
    """The `_Chunks` of a geometry, built once: a layer called eagerly (torch)
    would otherwise index its row table anew on every call."""
    return _Chunks(geo, grouping, size, loop_by_map)


def _slice(values, start, size):
    """Positions ``start..start+size-1`` of ``(P, ...)`` values; `start` may
    be a tensor (inside `keras.ops.map`)."""
    if isinstance(start, int):
        return values[start : start + size]
    shape = ops.shape(values)
    return ops.slice(values, (start, *[0] * (len(shape) - 1)), (size, *shape[1:]))


def _chunked(x_rows, kernel, geo, grouping, channels_last, formulation):
    """``(P, batch, filters)``, `formulation.chunk` units at a time.

    Its gradient is `_chunked_backward`, one more pass over the chunks: the
    backend's own would write an input-sized gradient per chunk and keep (or
    recompute the matmul of) every chunk's patches.
    """
    layout = formulation.batch_before_channels
    chunks = _chunks(geo, grouping, formulation.chunk, formulation.loop_by_map)
    size, per_unit = chunks.size, chunks.per_unit
    plan = _groups.plan_of(grouping, geo.num_positions)

    def forward(x_rows, kernel):
        def step(start, rows):
            patches = _patches(
                x_rows, rows, size, per_unit, geo, channels_last, layout, True
            )
            return (_contract_rows(patches, kernel, start, size, per_unit),)

        (outputs,) = chunks.map(step)
        # Reordered inside the custom gradient: the cotangent of a gather,
        # outside, would reach it sparse on TensorFlow (`IndexedSlices`).
        return _positions(chunks.unique(outputs, per_unit), plan)

    if keras.backend.backend() not in _DIFFERENTIABLE:
        return forward(x_rows, kernel)

    if isinstance(kernel, EncodedKernel):
        # Its parts are arguments (None is their gradient), as Keras' own
        # quantized layers pass theirs: TensorFlow refuses variables read
        # inside, and JAX tracers closed over.
        @ops.custom_gradient
        def encoded_contraction(x_rows, *parts):
            encoded = kernel._replace(parts=parts)

            def gradient(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                d_x_rows = _input_gradient(
                    x_rows,
                    encoded,
                    _rows(upstream, plan),
                    chunks,
                    channels_last,
                    formulation,
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
            upstream = _rows(upstream, plan)
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
    geo, size, per_unit = chunks.geo, chunks.size, chunks.per_unit
    layout = formulation.batch_before_channels

    def kernel_gradient(start, rows):
        patches = _patches(x_rows, rows, size, per_unit, geo, channels_last, layout)
        cotangent = _slice(upstream, start * per_unit, size * per_unit)
        cotangent = _by_unit(cotangent, per_unit)  # (c, m * B, F)
        if layout:  # patches (c, m * B, K)
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
    geo, size, per_unit = chunks.geo, chunks.size, chunks.per_unit
    layout = formulation.batch_before_channels
    scatter_add = formulation.scatter_add
    if scatter_add is None:
        scatter_add = _transpose.HAS_SCATTER_ADD
    num_rows, units = math.prod(geo.padded_shape), chunks.units
    all_rows = _unit_rows(geo, chunks.grouping)
    d_x_rows = ops.zeros((num_rows, *ops.shape(x_rows)[1:]), x_rows.dtype)
    step = (formulation.group or chunks.count) * size
    rows_per_unit = per_unit * geo.taps
    for first in range(0, units, step):
        last = min(first + step, units)
        cotangent = _by_unit(upstream[first * per_unit : last * per_unit], per_unit)
        kernel_g = _kernel_rows(kernel, first, last - first)
        if layout:  # (n, m * B, F) @ (n, F, K) -> (n, m * B, K)
            contributions = ops.matmul(cotangent, ops.transpose(kernel_g, (0, 2, 1)))
        else:  # (n, K, F) @ (n, F, m * B) -> (n, K, m * B)
            contributions = ops.matmul(kernel_g, ops.transpose(cotangent, (0, 2, 1)))
        contributions = _to_rows(contributions, per_unit, geo, channels_last, layout)
        rows = all_rows[first * rows_per_unit : last * rows_per_unit]
        if scatter_add:
            d_x_rows = ops.scatter_update(
                d_x_rows, rows[:, None], contributions, reduction="add"
            )
        else:
            d_x_rows = d_x_rows + ops.segment_sum(
                contributions, ops.convert_to_tensor(rows), num_segments=num_rows
            )
    return d_x_rows


def _by_unit(values, per_unit):
    """``(n * per_unit, B, F)`` values as ``(n, per_unit * B, F)``."""
    if per_unit == 1:
        return values
    shape = ops.shape(values)
    return ops.reshape(values, (-1, per_unit * shape[1], shape[2]))


def _output(outputs, bias, geo, channels_last):
    """``(P, B, F)`` plus the bias ``(P, F)``, as ``(B, *out, F)`` or
    ``(B, F, *out)``."""
    filters = outputs.shape[-1]
    if bias is not None:
        outputs = outputs + ops.expand_dims(bias, 1)
    if channels_last:  # (P, B, F) -> (B, P, F) -> (B, *out, F)
        outputs = ops.transpose(outputs, (1, 0, 2))
        return ops.reshape(outputs, (-1, *geo.output_shape, filters))
    outputs = ops.transpose(outputs, (1, 2, 0))  # (B, F, P)
    return ops.reshape(outputs, (-1, filters, *geo.output_shape))
