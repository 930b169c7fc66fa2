"""The per-tap formulation: a local convolution without patches.

Where ``K * filters`` is small (a few channels and filters: genomic markers,
3D fields of a few variables), the patches of the engine's gather are ``K``
times the input and far larger than the kernel, and each position's matmul
is a few multiply-adds. Here no patch exists: for each kernel *tap* (one
offset inside the window), one strided slice of the padded input holds every
output position's input at that tap, ``(batch, *output_shape, channels)``;
it is multiplied by that tap's weights, ``(*output_shape, channels,
filters)``, and added into the outputs. A Python loop over the taps of a few
`keras.ops` calls each: on JAX, XLA fuses the loop into one pass over the
input; on TensorFlow and torch, each tap is one multiply and one add (plus a
sum over channels where there are several).

The product of one tap is either elementwise (a broadcast multiply and a sum
over the contracted axis: no matmul call, which for a handful of channels
and filters is all overhead) or an `keras.ops.einsum` (where channels and
filters are many enough for a small matmul per position to pay);
`elementwise_pays` is the default choice.

Its backward pass is its own (`keras.ops.custom_gradient`): the input
gradient is the adjoint, tap by tap, of the strided slice: the output
gradient times the tap's weights, shifted to where that tap read
(accumulated per stride phase, so that no zeros are multiplied), cropped to
the input or, with circular padding, folded back onto it. The kernel
gradient is, per tap, the slice times the output gradient summed over the
batch.
"""

import itertools
from typing import NamedTuple

import keras
from keras import ops

from keras_localconn import _local_conv

# Largest ``channels * filters`` for which `elementwise_pays`; provisional,
# until the schedule's rule chooses. Elementwise, a tap writes ``channels *
# filters`` products per (batch, position) before summing them; an einsum
# writes only its result, but runs one tiny matmul per position.
ELEMENTWISE_MAX = 16


def elementwise_pays(channels, filters):
    """Whether each tap's product is elementwise rather than an einsum."""
    return channels * filters <= ELEMENTWISE_MAX


def local_conv_taps(
    inputs, kernel, geo, channels_last, grouping=None, elementwise=None
):
    """A local convolution computed tap by tap, without patches.

    Args:
        inputs: ``(batch, *spatial_shape, channels)`` (`channels_last`) or
            ``(batch, channels, *spatial_shape)``, unpadded.
        kernel: ``(P, K, filters)``, or ``(T, K, filters)`` with `grouping`,
            K ordered as the engine's (offsets, then channel, in
            channels_last; channel, then offsets, in channels_first); or an
            `_local_conv.EncodedKernel` of that shape, decoded once (it gets
            no gradient).
        geo: the call's `_shapes.Geometry` (padding amounts and mode
            included).
        channels_last: the layout of `inputs` and of the result.
        grouping: the call's `_groups.Grouping`, or None for one kernel per
            position.
        elementwise: each tap's product elementwise (True) or as an einsum
            (False); None for `elementwise_pays`.

    Returns:
        ``(batch, *output_shape, filters)`` (`channels_last`) or ``(batch,
        filters, *output_shape)``: the convolution, no bias.
    """
    layout = _Layout.of(geo.rank, channels_last)
    trains_kernel = not isinstance(kernel, _local_conv.EncodedKernel)
    if trains_kernel:
        # A tensor, not the variable: TensorFlow's custom_gradient refuses
        # functions that read variables.
        kernel = ops.reshape(kernel, kernel.shape)
    else:  # small in this regime: decoded once, whole
        kernel = ops.stop_gradient(kernel.rows(0, kernel.shape[0]))
    kernel = ops.cast(kernel, inputs.dtype)
    if elementwise is None:
        elementwise = elementwise_pays(geo.channels, kernel.shape[-1])
    groups = None
    if grouping is not None:
        groups = ops.convert_to_tensor(grouping.groups.astype("int32"))

    def forward(x, kernel):
        padded = _padded(x, geo, layout)
        weights = _tap_weights(kernel, groups, geo, layout)
        return padded, weights, _forward(padded, weights, geo, layout, elementwise)

    if keras.backend.backend() not in _local_conv._DIFFERENTIABLE:
        return forward(inputs, kernel)[-1]

    @ops.custom_gradient
    def taps(x, kernel):
        padded, weights, outputs = forward(x, kernel)

        def gradient(*args, upstream=None):
            if upstream is None:  # JAX and TensorFlow pass it positionally
                (upstream,) = args
            d_x = _input_gradient(upstream, weights, geo, layout, elementwise)
            if not trains_kernel:  # stopped above: zeros, never read
                return d_x, ops.zeros_like(kernel)
            d_weights = _weights_gradient(padded, upstream, geo, layout, elementwise)
            return d_x, _kernel_gradient(d_weights, groups, grouping, geo, layout)

        return outputs, gradient

    return taps(inputs, kernel)


class _Layout(NamedTuple):
    """The axes of each tensor, as einsum letters: batch ``b``, channels
    ``c``, filters ``f``, output positions ``x``, ``y``, ``z``. `union`
    holds every letter, each operand's letters in its order, so that an
    elementwise product needs no transpose, only new axes of size 1."""

    inputs: str
    weights: str
    outputs: str
    union: str

    @classmethod
    def of(cls, rank, channels_last):
        spatial = "xyz"[:rank]
        if channels_last:
            return cls(f"b{spatial}c", f"{spatial}cf", f"b{spatial}f", f"b{spatial}cf")
        return cls(f"bc{spatial}", f"cf{spatial}", f"bf{spatial}", f"bcf{spatial}")

    @property
    def first_spatial_axis(self):
        """The first spatial axis of the inputs and the outputs."""
        return self.inputs.index("x")


def _offsets(geo):
    """Every tap's offset in the window, row-major (the kernel's order)."""
    return list(itertools.product(*(range(k) for k in geo.kernel_size)))


def _padded(x, geo, layout):
    """`x` with the geometry's padding: zeros, or the opposite edge."""
    if not any(lo or hi for lo, hi in geo.pads):
        return x
    first = layout.first_spatial_axis
    if geo.pad_mode == "circular":
        return _local_conv._pad_circular(x, geo, first_axis=first)
    widths = [(0, 0)] * len(layout.inputs)
    widths[first : first + geo.rank] = geo.pads
    return ops.pad(x, widths)


def _tap_slice(padded, geo, offset, layout):
    """What every output position reads at the tap `offset`: ``(batch,
    *output_shape, channels)`` or ``(batch, channels, *output_shape)``."""
    index = [slice(None)] * len(layout.inputs)
    first = layout.first_spatial_axis
    for axis, (j, n, s, d) in enumerate(
        zip(offset, geo.output_shape, geo.strides, geo.dilation_rate)
    ):
        index[first + axis] = slice(j * d, j * d + (n - 1) * s + 1, s)
    return padded[tuple(index)]


def _tap_weights(kernel, groups, geo, layout):
    """The kernel as ``(taps, *output_shape, channels, filters)`` or
    ``(taps, channels, filters, *output_shape)``: one position's weights per
    tap, the group's where `groups` maps positions to groups."""
    if groups is not None:  # (T, K, F) -> (P, K, F)
        kernel = ops.take(kernel, groups, axis=0)
    filters, taps = kernel.shape[-1], geo.taps
    if layout.inputs.endswith("c"):  # K ordered (offsets, channel)
        weights = ops.reshape(kernel, (-1, taps, geo.channels, filters))
        weights = ops.transpose(weights, (1, 0, 2, 3))
        return ops.reshape(weights, (taps, *geo.output_shape, geo.channels, filters))
    weights = ops.reshape(kernel, (-1, geo.channels, taps, filters))
    weights = ops.transpose(weights, (2, 1, 3, 0))  # (taps, C, F, P)
    return ops.reshape(weights, (taps, geo.channels, filters, *geo.output_shape))


def _kernel_gradient(d_weights, groups, grouping, geo, layout):
    """`d_weights`, laid out as `_tap_weights` returns it, as the kernel's
    ``(P, K, filters)``, summed over each group's positions with `grouping`."""
    filters, taps = d_weights.shape[layout.weights.index("f") + 1], geo.taps
    if layout.inputs.endswith("c"):
        d_kernel = ops.reshape(d_weights, (taps, -1, geo.channels, filters))
        d_kernel = ops.transpose(d_kernel, (1, 0, 2, 3))
    else:
        d_kernel = ops.reshape(d_weights, (taps, geo.channels, filters, -1))
        d_kernel = ops.transpose(d_kernel, (3, 1, 0, 2))  # (P, C, taps, F)
    d_kernel = ops.reshape(d_kernel, (geo.num_positions, geo.patch_size, filters))
    if groups is None:
        return d_kernel
    return ops.segment_sum(d_kernel, groups, num_segments=grouping.count)


def _product(a, a_letters, b, b_letters, layout, result_letters, elementwise):
    """The einsum ``a_letters,b_letters->result_letters``.

    Elementwise: `a` and `b` broadcast to `layout.union`, multiplied, the
    letters not in the result summed. Axes of size 1 (one channel, one
    filter) are dropped first and restored last: the elementwise kernels
    then see fewer, longer axes (torch's run ~2x faster).
    """
    if not elementwise:
        return ops.einsum(f"{a_letters},{b_letters}->{result_letters}", a, b)
    single = {
        letter
        for values, letters in ((a, a_letters), (b, b_letters))
        for letter, size in zip(letters, values.shape)
        if letter != "b" and size == 1
    }
    a, a_letters = _without(a, a_letters, single)
    b, b_letters = _without(b, b_letters, single)
    union = "".join(letter for letter in layout.union if letter not in single)
    product = _broadcast(a, a_letters, union) * _broadcast(b, b_letters, union)
    summed = [i for i, letter in enumerate(union) if letter not in result_letters]
    if summed == [0]:
        # The batch, as a matrix-vector product: XLA's CPU reduction down a
        # leading axis runs ~10x slower (the other backends: the same).
        batch = ops.shape(product)[0]
        rows = ops.reshape(product, (batch, -1))
        total = ops.matmul(ops.ones((1, batch), product.dtype), rows)
        product = ops.reshape(total, product.shape[1:])
    elif summed:  # one channels or filters axis, of a few values
        (axis,) = summed
        product = _unrolled_sum(product, axis)
    for axis, letter in enumerate(result_letters):
        if letter in single:
            product = ops.expand_dims(product, axis)
    return product


def _unrolled_sum(values, axis):
    """The sum along `axis` (a static size) as one add per value: XLA's CPU
    reduction of a short axis, fused with the product before it, runs ~40x
    slower than these adds, which the other backends run as fast as a sum."""
    index = [slice(None)] * len(values.shape)
    total = None
    for position in range(values.shape[axis]):
        index[axis] = position
        total = values[tuple(index)] if total is None else total + values[tuple(index)]
    return total


def _without(values, letters, dropped):
    """`values` without the axes of `dropped` letters (each of size 1)."""
    axes = [axis for axis, letter in enumerate(letters) if letter in dropped]
    if not axes:
        return values, letters
    kept = "".join(letter for letter in letters if letter not in dropped)
    return ops.squeeze(values, axis=axes), kept


def _broadcast(values, letters, union):
    """`values`, its axes named by `letters`, with size-1 axes for the
    letters of `union` it lacks (`letters` is in `union`'s order)."""
    for axis, letter in enumerate(union):
        if letter not in letters:
            values = ops.expand_dims(values, axis)
    return values


def _forward(padded, weights, geo, layout, elementwise):
    """The outputs: every tap's slice times its weights, added up."""
    outputs = None
    for tap, offset in enumerate(_offsets(geo)):
        contribution = _product(
            _tap_slice(padded, geo, offset, layout),
            layout.inputs,
            weights[tap],
            layout.weights,
            layout,
            layout.outputs,
            elementwise,
        )
        outputs = contribution if outputs is None else outputs + contribution
    return outputs


def _weights_gradient(padded, upstream, geo, layout, elementwise):
    """d weights: per tap, its slice times the output gradient, summed over
    the batch; stacked as `_tap_weights` lays the weights out."""
    return ops.stack(
        [
            _product(
                _tap_slice(padded, geo, offset, layout),
                layout.inputs,
                upstream,
                layout.outputs,
                layout,
                layout.weights,
                elementwise,
            )
            for offset in _offsets(geo)
        ]
    )


def _input_gradient(upstream, weights, geo, layout, elementwise):
    """d inputs, the adjoint of `_forward` in the inputs.

    Each tap's contribution (the output gradient times its weights, one
    value per output position) goes back where its slice read: positions
    ``j * d + o * s`` of each padded axis. Written as ``(o + q) * s + r``
    with ``j * d = q * s + r``, they are the positions ``o + q`` of the
    stride phase ``r``: each phase is accumulated with one pad (the shift
    ``q``) and one add per tap, and the phases are interleaved once at the
    end. Then the padding is cropped (zeros) or folded back (circular).
    """
    blocks = [-(-n // s) for n, s in zip(geo.padded_shape, geo.strides)]
    first = layout.first_spatial_axis
    phases = {}
    for tap, offset in enumerate(_offsets(geo)):
        contribution = _product(
            upstream,
            layout.outputs,
            weights[tap],
            layout.weights,
            layout,
            layout.inputs,
            elementwise,
        )
        starts = [j * d for j, d in zip(offset, geo.dilation_rate)]
        phase = tuple(start % s for start, s in zip(starts, geo.strides))
        widths = [(0, 0)] * len(layout.inputs)
        for axis, (start, s, n, length) in enumerate(
            zip(starts, geo.strides, geo.output_shape, blocks)
        ):
            widths[first + axis] = (start // s, length - start // s - n)
        if any(lo or hi for lo, hi in widths):
            contribution = ops.pad(contribution, widths)
        if phase in phases:
            phases[phase] = phases[phase] + contribution
        else:
            phases[phase] = contribution
    d_padded = _interleaved(phases, blocks, geo, layout)
    return _unpadded(d_padded, geo, layout)


def _interleaved(phases, blocks, geo, layout):
    """The stride phases, ``(..., blocks, ...)`` each, as one tensor of the
    padded input's shape: position ``o * s + r`` of an axis from position
    ``o`` of phase ``r``; phases no tap wrote are zeros."""
    first, rank = layout.first_spatial_axis, geo.rank
    if len(phases) == 1 and all(s == 1 for s in geo.strides):
        return phases[(0,) * rank]
    present = next(iter(phases.values()))
    zeros = ops.zeros_like(present)
    stacked = ops.stack(
        [
            phases.get(phase, zeros)
            for phase in itertools.product(*(range(s) for s in geo.strides))
        ]
    )
    # (phases..., ...inputs axes with blocks) -> each block axis followed by
    # its phase axis, then merged into one axis of blocks * stride.
    stacked = ops.reshape(stacked, (*geo.strides, *ops.shape(present)))
    order, merged_shape = [], []
    for axis in range(len(layout.inputs)):
        order.append(rank + axis)
        spatial = axis - first
        if 0 <= spatial < rank:
            order.append(spatial)
            merged_shape.append(blocks[spatial] * geo.strides[spatial])
        else:
            merged_shape.append(-1 if axis == 0 else present.shape[axis])
    merged = ops.reshape(ops.transpose(stacked, order), merged_shape)
    index = [slice(None)] * len(layout.inputs)
    for spatial, length in enumerate(geo.padded_shape):
        index[first + spatial] = slice(0, length)
    return merged[tuple(index)]


def _unpadded(d_padded, geo, layout):
    """The gradient of the padded input as that of the input: the padding
    cropped, or with circular padding, each padded position added to the
    input position it repeats."""
    first = layout.first_spatial_axis
    if geo.pad_mode != "circular":
        index = [slice(None)] * len(layout.inputs)
        for spatial, (n, (lo, _)) in enumerate(zip(geo.spatial_shape, geo.pads)):
            index[first + spatial] = slice(lo, lo + n)
        return d_padded[tuple(index)]
    for spatial, (n, (lo, _)) in enumerate(zip(geo.spatial_shape, geo.pads)):
        axis = first + spatial
        length = d_padded.shape[axis]
        # Padded position i repeats input position (i - lo) mod n: with
        # `before` zeros first, position k of the axis is (k mod n).
        before = -lo % n
        after = -(before + length) % n
        if before or after:
            widths = [(0, 0)] * len(layout.inputs)
            widths[axis] = (before, after)
            d_padded = ops.pad(d_padded, widths)
        shape = [-1 if i == 0 else size for i, size in enumerate(d_padded.shape)]
        shape[axis : axis + 1] = [(before + length + after) // n, n]
        d_padded = ops.sum(ops.reshape(d_padded, shape), axis=axis)
    return d_padded
