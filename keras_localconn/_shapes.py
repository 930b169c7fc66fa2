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
    pairs, as `_arguments.normalize_padding` returns it): itself.
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
