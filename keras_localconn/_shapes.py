"""Static shape arithmetic of a local convolution: the one home of the formulas.

Pure functions of Python ints (no tensors): how an input shape splits into
spatial axes and channels, the padding (Keras' `Conv` amounts, or explicit)
and what fills it, the output sizes, the kernel shape, and the rows a gather
reads to build the patches.
"""

import dataclasses
import functools
import math

import numpy as np


def split_input_shape(input_shape, data_format):
    """`(spatial_shape, channels)` of an input shape that includes the batch."""
    input_shape = tuple(input_shape)
    if data_format == "channels_last":
        return input_shape[1:-1], input_shape[-1]
    return input_shape[2:], input_shape[1]


def padding_amounts(spatial_shape, kernel_size, strides, padding, dilation_rate):
    """Per-axis ``(before, after)`` padding, the way Keras' `Conv` pads.

    ``valid``: none. ``same`` and ``circular``: output length
    ``ceil(n / stride)``, with the total padding split as Keras/TensorFlow/XLA
    do (the smaller half before). ``causal``: ``(kernel_size - 1) * dilation``
    before, none after. Explicit padding (a tuple of ``(before, after)``
    pairs, as `_arguments.standardize_padding` returns it): itself.
    """
    if not isinstance(padding, str):
        return tuple(padding)
    pads = []
    for n, k, s, d in zip(spatial_shape, kernel_size, strides, dilation_rate):
        effective = (k - 1) * d + 1
        if padding in ("same", "circular"):
            out = -(-n // s)
            total = max((out - 1) * s + effective - n, 0)
            pads.append((total // 2, total - total // 2))
        elif padding == "causal":
            pads.append((effective - 1, 0))
        else:
            pads.append((0, 0))
    return tuple(pads)


def pad_mode(padding):
    """What fills the padding: ``"circular"`` (the opposite edge) or ``"zeros"``."""
    return "circular" if padding == "circular" else "zeros"


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Everything static about one local convolution, computed once."""

    spatial_shape: tuple
    channels: int
    kernel_size: tuple
    strides: tuple
    dilation_rate: tuple
    pads: tuple
    output_shape: tuple
    # "zeros", or "circular": the padding repeats the input periodically
    # (index i of a padded axis reads input index (i - before) mod n).
    pad_mode: str = "zeros"

    @property
    def rank(self):
        return len(self.spatial_shape)

    @property
    def padded_shape(self):
        return tuple(n + lo + hi for n, (lo, hi) in zip(self.spatial_shape, self.pads))

    @property
    def num_positions(self):
        return math.prod(self.output_shape)

    @property
    def taps(self):
        return math.prod(self.kernel_size)

    @property
    def patch_size(self):
        return self.taps * self.channels

    def kernel_shape(self, filters):
        return (self.num_positions, self.patch_size, filters)


@functools.lru_cache(maxsize=256)
def geometry(
    spatial_shape, channels, kernel_size, strides, padding, dilation_rate, owner
):
    """The `Geometry` of normalised arguments; a `ValueError` if nothing fits.

    Raises when an output size would be <= 0, naming the axis and the sizes.
    """
    pads = padding_amounts(spatial_shape, kernel_size, strides, padding, dilation_rate)
    output_shape = []
    for axis, (n, k, s, d, (lo, hi)) in enumerate(
        zip(spatial_shape, kernel_size, strides, dilation_rate, pads)
    ):
        length = (n + lo + hi - (k - 1) * d - 1) // s + 1
        if length <= 0:
            raise ValueError(
                f"{owner}: spatial dimension {axis} of the output would be "
                f"{length} (input size {n}, kernel_size {k}, dilation_rate {d}, "
                f"strides {s}, padding {padding!r}). The input is too small for "
                f"the kernel; use a larger input, a smaller kernel or more "
                f"padding (e.g. padding='same')."
            )
        output_shape.append(length)
    return Geometry(
        tuple(spatial_shape),
        channels,
        tuple(kernel_size),
        tuple(strides),
        tuple(dilation_rate),
        pads,
        tuple(output_shape),
        pad_mode(padding),
    )


@functools.lru_cache(maxsize=64)
def gather_rows(geo):
    """Row of the flattened padded input read by each (position, kernel offset).

    Both row-major, position-major: the start of each output window plus each
    offset inside it. Shape ``(P * taps,)``, int32.
    """
    padded_shape = geo.padded_shape
    row_stride = np.cumprod([1, *padded_shape[:0:-1]])[::-1]
    window_starts = np.zeros((), np.int64)
    offsets = np.zeros((), np.int64)
    for n, k, s, d, step in zip(
        geo.output_shape, geo.kernel_size, geo.strides, geo.dilation_rate, row_stride
    ):
        window_starts = np.add.outer(window_starts, np.arange(n) * s * step)
        offsets = np.add.outer(offsets, np.arange(k) * d * step)
    rows = np.add.outer(window_starts.ravel(), offsets.ravel()).ravel()
    return rows.astype(np.int32)


# --------------------------------------------------------------------------
# The transposed local convolution
# --------------------------------------------------------------------------
#
# A transposed convolution is the adjoint, with respect to its input, of the
# forward convolution that maps its output back to its input. Everything
# static about it is therefore that forward convolution's `Geometry`: its
# `spatial_shape` is the transposed op's output, its `output_shape` the
# transposed op's input, its `channels` the transposed op's filters.


def transpose_axis(length, kernel_size, stride, dilation, padding, output_padding):
    """``(output length, pad before, pad after)`` of one transposed axis.

    The output length is that of `keras.layers.Conv*DTranspose`
    (`compute_conv_transpose_output_shape` in Keras):

    - ``valid``: ``(n - 1) * s + e + output_padding``, where ``e`` is the
      dilated kernel extent and ``output_padding`` defaults to
      ``max(e, s) - e``;
    - ``same``: ``n * s``, or ``(n - 1) * s + e % 2 + output_padding`` when
      `output_padding` is given.

    The pads are those of the forward convolution whose adjoint this is:
    Keras' transposed convolution pads the stride-dilated input by
    ``(left, right)`` and correlates it with the flipped kernel, so the forward
    convolution pads its input (the transposed output) by
    ``e - 1 - left`` before and ``e - 1 - right`` after. "after" is negative
    where the transposed output ends in positions that no window reaches
    (`output_padding`, or strides larger than the kernel).
    """
    n, k, s, d = length, kernel_size, stride, dilation
    extent = (k - 1) * d + 1
    if padding == "valid":
        extra = max(extent, s) - extent if output_padding is None else output_padding
        left, right = extent - 1, extent - 1 + extra
    else:
        if output_padding is None:
            total = s + extent - 2
        else:
            total = extent + extent % 2 - 2 + output_padding
        left = min(total // 2 + total % 2, extent - 1)
        right = total - left
    output_length = (n - 1) * s + 1 + left + right - (extent - 1)
    return output_length, extent - 1 - left, extent - 1 - right


@functools.lru_cache(maxsize=256)
def transpose_geometry(
    spatial_shape,
    filters,
    kernel_size,
    strides,
    padding,
    output_padding,
    dilation_rate,
    owner,
):
    """The forward `Geometry` whose adjoint is this transposed convolution.

    `spatial_shape` is the transposed op's input; the geometry's
    `spatial_shape` is its output (Keras' `Conv*DTranspose` sizes), its
    `channels` the transposed op's `filters`. Negative pads after (positions
    that no window reaches) are stored as 0: those positions are zeros of
    the padded input that no window reads either. Raises a `ValueError`
    naming the axis when an output size would be <= 0.
    """
    output_shape, pads = [], []
    for axis, (n, k, s, d) in enumerate(
        zip(spatial_shape, kernel_size, strides, dilation_rate)
    ):
        extra = None if output_padding is None else output_padding[axis]
        length, before, after = transpose_axis(n, k, s, d, padding, extra)
        if length <= 0:
            raise ValueError(
                f"{owner}: spatial dimension {axis} of the output would be "
                f"{length} (input size {n}, kernel_size {k}, dilation_rate {d}, "
                f"strides {s}, padding '{padding}', output_padding {extra}). "
                f"Use a larger input, padding='valid' or a larger output_padding."
            )
        output_shape.append(length)
        pads.append((before, max(after, 0)))
    return Geometry(
        tuple(output_shape),
        filters,
        tuple(kernel_size),
        tuple(strides),
        tuple(dilation_rate),
        tuple(pads),
        tuple(spatial_shape),
    )


@functools.lru_cache(maxsize=64)
def unpadded_rows(geo):
    """Row of the flattened *unpadded* input read by each (position, offset).

    `gather_rows` without the padding: position-major, shape ``(P * taps,)``,
    int32, with ``prod(spatial_shape)`` (one row past the end) where the window
    reads padding. A scatter-add of per-(position, offset) contributions into
    these rows is the adjoint of the gather, with the padding cropped away.
    """
    padded = np.unravel_index(gather_rows(geo), geo.padded_shape)
    coords = [c - lo for c, (lo, _) in zip(padded, geo.pads)]
    inside = np.ones(coords[0].shape, bool)
    for c, n in zip(coords, geo.spatial_shape):
        inside &= (c >= 0) & (c < n)
    clipped = [np.clip(c, 0, n - 1) for c, n in zip(coords, geo.spatial_shape)]
    rows = np.ravel_multi_index(clipped, geo.spatial_shape)
    return np.where(inside, rows, math.prod(geo.spatial_shape)).astype(np.int32)


@functools.lru_cache(maxsize=64)
def contributing_rows(geo):
    """For each row of the flattened unpadded input, the (position, offset)
    rows that read it: the inverse of `unpadded_rows`, as a table.

    Shape ``(prod(spatial_shape), fan_in)``, int32, where ``fan_in`` is the
    largest number of windows reading one input row; shorter lists are filled
    with ``P * taps`` (one row past the end). Gathering these rows and summing
    over the last axis is the scatter-add of `unpadded_rows`, without a
    scatter.
    """
    rows = unpadded_rows(geo).astype(np.int64)
    num_rows = math.prod(geo.spatial_shape)
    kept = np.flatnonzero(rows < num_rows)  # sorted: a stable order below
    targets = rows[kept]
    order = np.argsort(targets, kind="stable")
    targets, sources = targets[order], kept[order]
    counts = np.bincount(targets, minlength=num_rows)
    fan_in = max(int(counts.max(initial=0)), 1)
    slot = np.arange(targets.size) - (np.cumsum(counts) - counts)[targets]
    table = np.full((num_rows, fan_in), rows.size, np.int64)
    table[targets, slot] = sources
    return table.astype(np.int32)
