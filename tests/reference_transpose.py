"""An independent NumPy reference for the transposed locally connected op.

Plain loops that scatter each input position's contribution into its window
of the output; nothing from `keras_localconn` is used. The output length and
the window placement follow TensorFlow's definition of a transposed
convolution (the output length is given; the forward ``same``/``valid``
convolution over it decides where each window starts), not the pad algebra
of `keras_localconn._shapes`, so that the two derivations check each other.
"""

import itertools
import math

import numpy as np


def reference_transpose_length(n, k, s, d, padding, output_padding):
    """`keras.layers.Conv*DTranspose`'s output length (Keras documents it)."""
    extent = (k - 1) * d + 1
    if padding == "valid":
        if output_padding is None:
            output_padding = max(s - extent, 0)  # the window or the stride
        return (n - 1) * s + extent + output_padding
    if output_padding is None:
        return n * s
    return (n - 1) * s + extent % 2 + output_padding


def reference_transpose_start(n, length, k, s, d, padding):
    """Where window 0 starts in the output: minus TensorFlow's pad before.

    TensorFlow's `conv_transpose` is the gradient of the forward `conv` whose
    input has the given output `length`; that forward conv pads ``same`` as
    ``max((n - 1) * s + extent - length, 0) // 2`` before, ``valid`` not at all.
    """
    if padding == "valid":
        return 0
    extent = (k - 1) * d + 1
    return -(max((n - 1) * s + extent - length, 0) // 2)


def reference_local_conv_transpose(
    y,
    kernel,
    kernel_size,
    strides,
    dilation,
    padding,
    output_padding,
    data_format,
    bias=None,
):
    """x[b, j*s + start + t*d, f] += sum_c y[b, j, c] * W[p(j), k(t, f), c].

    `kernel` is (P, K, C) with P the input positions and K ordered
    (offsets..., filter) for channels_last and (filter, offsets...) for
    channels_first; `bias` is (*out, filters). Returns the layout of
    `data_format`.
    """
    y = np.asarray(y, np.float64)
    kernel = np.asarray(kernel, np.float64)
    if data_format == "channels_first":
        y = np.moveaxis(y, 1, -1)
    batch, *spatial, _ = y.shape
    taps = math.prod(kernel_size)
    filters = kernel.shape[1] // taps
    rank = len(spatial)
    extra = (None,) * rank if output_padding is None else output_padding
    out_shape = tuple(
        reference_transpose_length(n, k, s, d, padding, op)
        for n, k, s, d, op in zip(spatial, kernel_size, strides, dilation, extra)
    )
    starts = [
        reference_transpose_start(n, length, k, s, d, padding)
        for n, length, k, s, d in zip(
            spatial, out_shape, kernel_size, strides, dilation
        )
    ]
    x = np.zeros((batch, *out_shape, filters))
    for p, in_pos in enumerate(itertools.product(*(range(n) for n in spatial))):
        for offset in itertools.product(*(range(k) for k in kernel_size)):
            coords = tuple(
                j * s + start + t * d
                for j, s, start, t, d in zip(in_pos, strides, starts, offset, dilation)
            )
            if any(c < 0 or c >= n for c, n in zip(coords, out_shape)):
                continue  # falls in the padding: cropped
            offset_index = int(np.ravel_multi_index(offset, kernel_size))
            for f in range(filters):
                if data_format == "channels_last":
                    k_index = offset_index * filters + f
                else:
                    k_index = f * taps + offset_index
                x[(slice(None), *coords, f)] += (
                    y[(slice(None), *in_pos)] @ kernel[p, k_index]
                )
    if bias is not None:
        x = x + np.asarray(bias, np.float64)[None]
    if data_format == "channels_first":
        x = np.moveaxis(x, -1, 1)
    return x
