"""An independent NumPy reference for locally connected convolution.

Plain loops over output positions, kernel offsets and channels; nothing from
`keras_localconn` is used, so that the tests compare two implementations.
"""

import itertools
import math

import numpy as np


def same_padding(n, k, s, d):
    """Keras Conv 'same' padding: output ceil(n / s), smaller half first."""
    effective = (k - 1) * d + 1
    out = math.ceil(n / s)
    total = max((out - 1) * s + effective - n, 0)
    return total // 2, total - total // 2


def reference_padding(spatial, kernel_size, strides, dilation, padding):
    """Per-axis (before, after); `padding` a name or N (before, after) pairs.

    "circular" takes the amounts of "same" (what fills them differs).
    """
    if not isinstance(padding, str):
        assert len(padding) == len(spatial), padding
        return [tuple(pair) for pair in padding]
    pads = []
    for n, k, s, d in zip(spatial, kernel_size, strides, dilation):
        if padding == "valid":
            pads.append((0, 0))
        elif padding in ("same", "circular"):
            pads.append(same_padding(n, k, s, d))
        elif padding == "causal":
            pads.append(((k - 1) * d, 0))
        else:
            raise AssertionError(padding)
    return pads


def reference_output_shape(spatial, kernel_size, strides, dilation, padding):
    pads = reference_padding(spatial, kernel_size, strides, dilation, padding)
    return tuple(
        (n + lo + hi - (k - 1) * d - 1) // s + 1
        for n, k, s, d, (lo, hi) in zip(spatial, kernel_size, strides, dilation, pads)
    )


def reference_local_conv(
    x, kernel, kernel_size, strides, dilation, padding, data_format, bias=None
):
    """y[b, o, f] = sum_{offset, c} x[b, o*s - pad + offset*d, c] * W[p, k, f].

    `x` reads as zero outside the input, or, with padding "circular", at the
    coordinate modulo the input size. `padding` is a name or explicit
    (before, after) pairs.

    `kernel` is (P, K, F) with K ordered (offsets..., channel) for
    channels_last and (channel, offsets...) for channels_first; `bias` is
    (*out, F). Returns the layout of `data_format`.
    """
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    batch, *spatial, channels = x.shape
    out_shape = reference_output_shape(spatial, kernel_size, strides, dilation, padding)
    pads = reference_padding(spatial, kernel_size, strides, dilation, padding)
    filters = kernel.shape[-1]
    y = np.zeros((batch, *out_shape, filters))
    for p, out_pos in enumerate(itertools.product(*(range(o) for o in out_shape))):
        for offset in itertools.product(*(range(k) for k in kernel_size)):
            coords = tuple(
                o * s - lo + off * d
                for o, s, (lo, _), off, d in zip(
                    out_pos, strides, pads, offset, dilation
                )
            )
            if padding == "circular":  # periodic: the opposite edge
                coords = tuple(c % n for c, n in zip(coords, spatial))
            elif any(c < 0 or c >= n for c, n in zip(coords, spatial)):
                continue  # zero padding
            offset_index = int(np.ravel_multi_index(offset, kernel_size))
            for c in range(channels):
                if data_format == "channels_last":
                    k_index = offset_index * channels + c
                else:
                    k_index = c * math.prod(kernel_size) + offset_index
                y[(slice(None), *out_pos)] += np.outer(
                    x[(slice(None), *coords, c)], kernel[p, k_index]
                )
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None]
    if data_format == "channels_first":
        y = np.moveaxis(y, -1, 1)
    return y
