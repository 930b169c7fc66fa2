"""The forward engine: locally connected convolution on `keras.ops`.

A locally connected layer is a convolution whose kernel gains a leading
*positions* axis: output position ``p`` has its own ``(K, filters)`` matrix.

A call reads top-down: its arguments checked into a geometry
(`checked_geometry`), then one `_CallPlan` (its units, its
`_schedule.Formulation`, its chunks; `_plan`), then the computation that
plan names, handed the plan.

How it computes: the input is transposed once so that its spatial axes come
first, padded, and flattened into one row per pixel. A gather of rows, with
indices computed in numpy from the static shapes (`_shapes.gather_rows`),
builds the patches of a group of output positions, position-major, and one
batched matmul contracts them with those positions' kernels. Either all
positions go at once (`_all_at_once`, differentiated by the backend) or they
go in chunks (`_chunked`, with its own backward pass: `_kernel_gradient`,
`_input_gradient`). The number of ops grows neither with the kernel size
nor with the number of positions (a Python loop over at most
`_schedule.MAX_UNROLLED` chunks aside).

With `position_groups` (`_groups`), positions that share a kernel are the
rows of one matmul: the engine works on *units* of `_groups.Plan.per_unit`
positions (one, ungrouped), each unit's patches ``per_unit * batch`` rows of
one matmul with its group's kernel. One group is a convolution, computed by
`keras.ops.conv` (`_one_group`).
"""

import functools
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from keras_localconn import _arguments, _groups, _schedule, _shapes, _taps

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
):
    """`keras_localconn.ops.local_conv`, plus a bias.

    `bias`, ``(T, filters)`` (T = P without groups), is added while the
    result is still position-major, before the final transpose.
    `position_groups`: any form `_groups.resolve` takes. `kernel` may be an
    `EncodedKernel`, decoded one chunk at a time. How it computes is the
    call's `_CallPlan`, which `keras_localconn.ops.formulation` can pin.
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
    plan = _plan(inputs, kernel, geo, channels_last, grouping)
    if plan.as_conv:
        return _one_group(inputs, kernel, bias, plan)
    if grouping is not None and bias is not None:  # (T, F) -> a row per position
        bias = ops.take(bias, grouping.groups.astype("int32"), axis=0)
    if plan.formulation.taps:
        outputs = _taps.local_conv_taps(inputs, kernel, geo, channels_last, grouping)
        return _with_bias(outputs, bias, plan)
    if grouping is not None:
        if plan.groups.kernels is not None:  # at most 2 T kernels, never P
            kernel = _take_kernel(kernel, plan.groups.kernels)
    x_rows = _input_rows(inputs, plan)
    if plan.chunks is None:
        outputs = _all_at_once(x_rows, kernel, plan)
    else:
        outputs = _chunked(x_rows, kernel, plan)
    return _output(outputs, bias, plan)


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


class _CallPlan(NamedTuple):
    """How one call computes: derived once (`_plan`), then handed down.

    Attributes:
        geo: the call's `_shapes.Geometry`.
        channels_last: its data format.
        grouping: its `_groups.Grouping`, or None for a kernel per position.
        groups: its `_groups.Plan`, the units its positions are laid out in.
        formulation: its `_schedule.Formulation`.
        chunks: its `_Chunks`, or None where all units go at once.
    """

    geo: _shapes.Geometry
    channels_last: bool
    grouping: _groups.Grouping | None
    groups: _groups.Plan
    formulation: _schedule.Formulation
    chunks: "_Chunks | None"

    @property
    def as_conv(self):
        """One group (a shared kernel), computed by `keras.ops.conv`."""
        return (
            self.grouping is not None
            and self.grouping.count == 1
            and self.formulation.conv
            and _conv_takes(self.geo)
        )


def _plan(inputs, kernel, geo, channels_last, grouping):
    """The `_CallPlan` of a call: its units, then its formulation (chosen by
    `_schedule` for them, or pinned), then its chunks."""
    groups = _groups.plan_of(grouping, geo.num_positions)
    formulation = _schedule.formulation(
        geo,
        inputs.shape[0],
        inputs.dtype,
        kernel.shape[-1],
        decoded=isinstance(kernel, EncodedKernel),
        units=groups.units,
        per_unit=groups.per_unit,
    )
    chunks = None
    if formulation.chunk is not None and formulation.chunk < groups.units:
        chunks = _chunks(geo, grouping, formulation.chunk, formulation.loop_by_map)
    return _CallPlan(geo, channels_last, grouping, groups, formulation, chunks)


def _input_rows(inputs, plan):
    """The padded input with one row per pixel: the rows every gather reads.

    Rows of ``(batch, channels)`` with `batch_before_channels`, else rows of
    ``channels * batch`` contiguous values, which torch's gather copies
    whole (2x faster): `_ROWS` names their axes. The one place where padding
    is applied.
    """
    geo, rank = plan.geo, plan.geo.rank
    spatial = range(1, rank + 1) if plan.channels_last else range(2, rank + 2)
    channel_axis = rank + 1 if plan.channels_last else 1
    if plan.formulation.batch_before_channels:
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
    if plan.formulation.batch_before_channels:
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


# Layouts as `_rearrange` patterns over the axes u (units), m (positions of a
# unit), t (taps, the kernel offsets), c (channels) and b (batch). `_ROWS`:
# gathered rows of `x_rows`, by row layout (`batch_before_channels` or not).
# `_ROWS_FIRST`: patches as the forward matmul takes them, ``(units,
# per_unit * batch, K)``; `_OFFSETS_FIRST`: as the kernel gradient takes
# them, ``(units, K, per_unit * batch)``. `_K`: K's order, by data format
# (offsets then channel in channels_last, as Keras 2 stores the kernel).
_ROWS = {True: "(u m t) b c", False: "(u m t) (c b)"}
_ROWS_FIRST = "u (m b) {K}"
_OFFSETS_FIRST = "u {K} (m b)"
_K = {True: "(t c)", False: "(c t)"}


def _patches(x_rows, rows, units, plan, layout):
    """The patches of `units` units in `layout` (`_ROWS_FIRST` or
    `_OFFSETS_FIRST`): rows `rows` of `x_rows` (``units * per_unit * taps``
    of them), gathered and rearranged, one transpose at most."""
    patches = ops.take(x_rows, rows, axis=0)
    rows_axes = _ROWS[plan.formulation.batch_before_channels]
    return _rearrange(
        patches, rows_axes, layout.format(K=_K[plan.channels_last]), plan, units
    )


def _to_rows(values, units, plan, layout):
    """Values of `units` units laid out as patches in `layout`, as rows of
    `x_rows`: `_patches` undone but for the gather."""
    rows_axes = _ROWS[plan.formulation.batch_before_channels]
    return _rearrange(
        values, layout.format(K=_K[plan.channels_last]), rows_axes, plan, units
    )


def _rearrange(values, source, target, plan, units):
    """`values`, axes `source`, as axes `target` (einops' `rearrange`): one
    reshape into the named axes, one transpose unless they are in order, one
    reshape. Each side names axes separated by spaces; a parenthesised group
    is one axis of the tensor, its named axes in row-major order. Every axis
    but the batch has its size from the `plan` (`units` units); the batch
    may be unknown while tracing (TensorFlow)."""
    sizes = {
        "u": units,
        "m": plan.groups.per_unit,
        "t": plan.geo.taps,
        "c": plan.geo.channels,
    }
    source, target = _axis_groups(source), _axis_groups(target)
    shape = [
        -1
        if any(name not in sizes for name in group)
        else math.prod(sizes[name] for name in group)
        for group in target
    ]
    # Axes of size 1 go anywhere without moving a value.
    names = [n for group in source for n in group if sizes.get(n) != 1]
    order = [names.index(n) for group in target for n in group if n in names]
    if order == sorted(order):
        return ops.reshape(values, shape)
    # Axes next to each other in both orders move as one: the transpose has
    # as few axes as the move needs (the backends' fast paths are for few).
    runs = []
    for index in order:
        if runs and runs[-1][-1] + 1 == index:
            runs[-1].append(index)
        else:
            runs.append([index])
    in_source = sorted(runs)
    merged = [
        -1
        if any(names[i] not in sizes for i in run)
        else math.prod(sizes[names[i]] for i in run)
        for run in in_source
    ]
    values = ops.reshape(values, merged)
    values = ops.transpose(values, [in_source.index(run) for run in runs])
    return ops.reshape(values, shape)


@functools.lru_cache(maxsize=32)
def _axis_groups(axes):
    """``"(u m t) b c"`` as ``(("u", "m", "t"), ("b",), ("c",))``."""
    return tuple(
        tuple(group.split()) if group else (name,)
        for group, name in re.findall(r"\(([^)]*)\)|(\S+)", axes)
    )


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


def _one_group(inputs, kernel, bias, plan):
    """`local_conv`'s result with one kernel (and bias, ``(1, filters)``)
    shared by every position: a convolution, computed by `keras.ops.conv` in
    channels_last (which every backend runs on a CPU) after this engine's own
    padding."""
    geo, channels_last = plan.geo, plan.channels_last
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
    """The rows of `x_rows` every unit's patches read: ``(units, per_unit *
    taps)``, one row of the table per unit."""
    rows = _shapes.gather_rows(geo).reshape(geo.num_positions, geo.taps)
    if grouping is None:
        return rows
    groups = grouping.plan()
    return rows[groups.slots].reshape(groups.units, -1)


def _all_at_once(x_rows, kernel, plan):
    """``(P, batch, filters)``: every patch in one gather, one matmul.

    The backend differentiates it: its patches fit the budget of the
    schedule, and its backward pass has one gather to transpose.
    """
    units, per_unit = plan.groups.units, plan.groups.per_unit
    rows = _unit_rows(plan.geo, plan.grouping).reshape(-1)
    patches = _patches(x_rows, rows, units, plan, _ROWS_FIRST)
    outputs = _contract_rows(patches, kernel, 0, units, per_unit)
    return _positions(outputs, plan.groups)


def _positions(rows, groups):
    """``(P, batch, filters)``: rows of outputs laid out as `groups` (a
    `_groups.Plan`) lays units out, as output positions, padding rows
    dropped."""
    if groups.order is None:
        return rows
    return ops.take(rows, groups.order, axis=0)


def _rows(upstream, groups):
    """The cotangent of `_positions`: ``(units * per_unit, batch, filters)``,
    zero at padding rows."""
    if groups.order is None:
        return upstream
    zero = ops.zeros_like(upstream[:1])
    return ops.take(ops.concatenate([upstream, zero], axis=0), groups.fill, axis=0)


class _Chunks:
    """The static plan of a chunked call: which units each chunk holds.

    Every chunk has `size` consecutive units (positions, ungrouped); chunk
    ``i`` starts at ``min(i * size, units - size)``, so that the last one,
    where `size` does not divide the units, overlaps the one before by
    `overlap` units instead of being shorter. The kernel and the output
    cotangent are sliced per chunk, never copied into chunks.
    """

    def __init__(self, unit_rows, size, loop_by_map):
        """`unit_rows`: `_unit_rows`' table, one row per unit."""
        units = len(unit_rows)
        self.size, self.loop_by_map = size, loop_by_map
        self.count = math.ceil(units / size)
        self.starts = np.minimum(np.arange(self.count) * size, units - size)
        self.overlap = self.count * size - units
        chunk_units = self.starts[:, None] + np.arange(size)
        self.rows = unit_rows[chunk_units].reshape(self.count, -1)

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
    return _Chunks(_unit_rows(geo, grouping), size, loop_by_map)


def _slice(values, start, size):
    """Positions ``start..start+size-1`` of ``(P, ...)`` values; `start` may
    be a tensor (inside `keras.ops.map`)."""
    if isinstance(start, int):
        return values[start : start + size]
    shape = ops.shape(values)
    return ops.slice(values, (start, *[0] * (len(shape) - 1)), (size, *shape[1:]))


def _chunked(x_rows, kernel, plan):
    """``(P, batch, filters)``, `plan.chunks` (units) at a time.

    Its gradient is its own, one more pass over the chunks
    (`_kernel_gradient`, `_input_gradient`): the backend's would write an
    input-sized gradient per chunk and keep (or recompute the matmul of)
    every chunk's patches. An encoded kernel takes no gradient.
    """
    chunks, groups = plan.chunks, plan.groups
    size, per_unit = chunks.size, groups.per_unit

    def forward(x_rows, kernel):
        def step(start, rows):
            patches = _patches(x_rows, rows, size, plan, _ROWS_FIRST)
            return (_contract_rows(patches, kernel, start, size, per_unit),)

        (outputs,) = chunks.map(step)
        # Reordered inside the custom gradient: the cotangent of a gather,
        # outside, would reach it sparse on TensorFlow (`IndexedSlices`).
        return _positions(chunks.unique(outputs, per_unit), groups)

    if keras.backend.backend() not in _DIFFERENTIABLE:
        return forward(x_rows, kernel)

    # The kernel's tensors are arguments, as Keras' own quantized layers
    # pass an encoded kernel's parts: TensorFlow refuses variables read
    # inside a custom gradient, and JAX tracers closed over.
    encoded = isinstance(kernel, EncodedKernel)
    tensors = kernel.parts if encoded else (kernel,)

    @ops.custom_gradient
    def contraction(x_rows, *tensors):
        inner = kernel._replace(parts=tensors) if encoded else tensors[0]

        def gradient(*args, upstream=None):
            if upstream is None:  # JAX and TensorFlow pass it positionally
                (upstream,) = args
            upstream = _rows(upstream, groups)
            d_x_rows = _input_gradient(x_rows, inner, upstream, plan)
            if encoded:
                return (d_x_rows, *[None] * len(tensors))
            return d_x_rows, _kernel_gradient(x_rows, upstream, plan)

        return forward(x_rows, inner), gradient

    # Tensors, not variables (a reshape reads one, copying nothing).
    return contraction(x_rows, *[ops.reshape(t, t.shape) for t in tensors])


def _kernel_gradient(x_rows, upstream, plan):
    """``d kernel`` of `_chunked` for the cotangent `upstream`: one pass over
    the chunks, each rebuilding its patches (one gather) and multiplying them
    by its cotangent."""
    chunks, per_unit = plan.chunks, plan.groups.per_unit
    size = chunks.size

    def step(start, rows):
        cotangent = _slice(upstream, start * per_unit, size * per_unit)
        cotangent = _by_unit(cotangent, per_unit)  # (c, m * B, F)
        if plan.formulation.batch_before_channels:
            # The forward layout, transposed: the matmul sums in the order
            # it always has (gathered as `_OFFSETS_FIRST`, JAX's kernel
            # gradients differed in the last bit).
            patches = _patches(x_rows, rows, size, plan, _ROWS_FIRST)
            patches = ops.transpose(patches, (0, 2, 1))
        else:
            patches = _patches(x_rows, rows, size, plan, _OFFSETS_FIRST)
        return (ops.matmul(patches, cotangent),)  # (c, K, F)

    (d_kernel,) = chunks.map(step)
    return chunks.unique(d_kernel)


def _input_gradient(x_rows, kernel, upstream, plan):
    """``d x_rows`` of `_chunked` for the cotangent `upstream`.

    It needs no patches: the cotangent times the kernel gives every
    (position, offset)'s contribution, one batched matmul per group of
    `formulation.group` chunks' positions, added into the input gradient with
    one scatter-add (or segment sum) per group. No matmul of the forward pass
    is recomputed, no input-sized tensor is written per chunk, and no
    chunk's contributions are stacked or copied.
    """
    geo, formulation = plan.geo, plan.formulation
    units, per_unit = plan.groups.units, plan.groups.per_unit
    num_rows = math.prod(geo.padded_shape)
    unit_rows = _unit_rows(geo, plan.grouping)
    d_x_rows = ops.zeros((num_rows, *ops.shape(x_rows)[1:]), x_rows.dtype)
    step = (formulation.group or plan.chunks.count) * plan.chunks.size
    for first in range(0, units, step):
        last = min(first + step, units)
        cotangent = _by_unit(upstream[first * per_unit : last * per_unit], per_unit)
        kernel_rows = _kernel_rows(kernel, first, last - first)
        if formulation.batch_before_channels:  # (n, m * B, F) @ (n, F, K)
            layout = _ROWS_FIRST
            kernel_rows = ops.transpose(kernel_rows, (0, 2, 1))
            contributions = ops.matmul(cotangent, kernel_rows)
        else:  # (n, K, F) @ (n, F, m * B)
            layout = _OFFSETS_FIRST
            cotangent = ops.transpose(cotangent, (0, 2, 1))
            contributions = ops.matmul(kernel_rows, cotangent)
        contributions = _to_rows(contributions, last - first, plan, layout)
        rows = unit_rows[first:last].reshape(-1)
        if formulation.scatter_add:
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


def _with_bias(outputs, bias, plan):
    """``(B, *out, F)`` or ``(B, F, *out)`` outputs plus the bias ``(P, F)``."""
    if bias is None:
        return outputs
    bias = ops.reshape(bias, (*plan.geo.output_shape, -1))
    if not plan.channels_last:
        bias = ops.moveaxis(bias, -1, 0)
    return outputs + ops.cast(bias, outputs.dtype)


def _output(outputs, bias, plan):
    """``(P, B, F)`` plus the bias ``(P, F)``, as ``(B, *out, F)`` or
    ``(B, F, *out)``."""
    geo, filters = plan.geo, outputs.shape[-1]
    if bias is not None:
        outputs = outputs + ops.expand_dims(bias, 1)
    if plan.channels_last:  # (P, B, F) -> (B, P, F) -> (B, *out, F)
        outputs = ops.transpose(outputs, (1, 0, 2))
        return ops.reshape(outputs, (-1, *geo.output_shape, filters))
    outputs = ops.transpose(outputs, (1, 2, 0))  # (B, F, P)
    return ops.reshape(outputs, (-1, filters, *geo.output_shape))
