"""The functional core: locally connected convolution on `keras.ops`.

A locally connected layer is a convolution whose kernel gains a leading
*positions* axis: output position ``p`` has its own ``(K, filters)`` matrix.
Everything here is backend-neutral (only `keras.ops` and numpy for static
shape arithmetic), for 1, 2 and 3 spatial dimensions, in one code path.

How it computes: the input is transposed once so that its spatial axes come
first and the batch last, ``(*spatial, channels, batch)``, and its spatial axes
are flattened. One gather of rows, with indices computed in numpy from the
static shapes, then yields every patch, position-major and batch last,
``(P, K, batch)``, and a single batched
``matmul((P, filters, K), (P, K, batch))`` contracts them with the kernel. The
number of ops does not grow with the kernel size nor with the number of output
positions; benchmarks/ holds the measurements behind this layout.
"""

import math

import keras
import numpy as np
from keras import ops

__all__ = [
    "local_conv",
    "local_conv_kernel_shape",
    "local_conv_output_shape",
    "local_conv_padding",
]

PADDINGS = ("valid", "same", "causal")
DATA_FORMATS = ("channels_last", "channels_first")


# --------------------------------------------------------------------------
# Argument normalisation (shared with the layers)
# --------------------------------------------------------------------------


def normalize_tuple(value, rank, name, owner="local_conv"):
    """`value` as a tuple of `rank` positive ints, or a `ValueError`.

    `owner` names the caller (a layer name or `local_conv`) in the message.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = (int(value),) * rank
    else:
        try:
            values = tuple(value)
        except TypeError:
            values = None
        if values is None or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(
                f"{owner}: `{name}` must be an int or a tuple of {rank} ints. "
                f"Received: {name}={value!r}"
            )
        values = tuple(int(v) for v in values)
        if len(values) != rank:
            raise ValueError(
                f"{owner}: `{name}` must have {rank} element(s), one per spatial "
                f"dimension. Received: {name}={value!r}"
            )
    if any(v <= 0 for v in values):
        raise ValueError(
            f"{owner}: every element of `{name}` must be a positive integer. "
            f"Received: {name}={value!r}"
        )
    return values


def normalize_padding(padding, rank, owner="local_conv"):
    """Lower-cased padding name, checked against what `rank` allows."""
    allowed = PADDINGS if rank == 1 else PADDINGS[:2]
    if not isinstance(padding, str) or padding.lower() not in allowed:
        raise ValueError(
            f"{owner}: `padding` must be one of {allowed} "
            f"({'causal only for 1D; ' if rank > 1 else ''}case-insensitive). "
            f"Received: padding={padding!r}"
        )
    return padding.lower()


def normalize_data_format(data_format, owner="local_conv"):
    """`data_format`, with `None` meaning `keras.config.image_data_format()`."""
    if data_format is None:
        data_format = keras.config.image_data_format()
    if not isinstance(data_format, str) or data_format.lower() not in DATA_FORMATS:
        raise ValueError(
            f"{owner}: `data_format` must be one of {DATA_FORMATS} or None. "
            f"Received: data_format={data_format!r}"
        )
    return data_format.lower()


def check_strides_and_dilation(strides, dilation_rate, owner="local_conv"):
    """Keras convolutions refuse strides > 1 with dilation > 1 on one axis."""
    for axis, (s, d) in enumerate(zip(strides, dilation_rate)):
        if s > 1 and d > 1:
            raise ValueError(
                f"{owner}: `strides` > 1 is not compatible with `dilation_rate` > 1 "
                f"on the same axis (axis {axis}). Received: strides={strides}, "
                f"dilation_rate={dilation_rate}"
            )


# --------------------------------------------------------------------------
# Static shape arithmetic: the one place the output and padding sizes live
# --------------------------------------------------------------------------


def local_conv_padding(spatial_shape, kernel_size, strides, padding, dilation_rate):
    """Per-axis ``(before, after)`` zero padding, the way Keras' `Conv` pads.

    ``valid``: none. ``same``: output length ``ceil(n / stride)``, with the
    total padding split as Keras/TensorFlow/XLA do (the smaller half before).
    ``causal``: ``(kernel_size - 1) * dilation`` before, none after.
    """
    pads = []
    for n, k, s, d in zip(spatial_shape, kernel_size, strides, dilation_rate):
        effective = (k - 1) * d + 1
        if padding == "same":
            out = -(-n // s)
            total = max((out - 1) * s + effective - n, 0)
            pads.append((total // 2, total - total // 2))
        elif padding == "causal":
            pads.append((effective - 1, 0))
        else:
            pads.append((0, 0))
    return tuple(pads)


def local_conv_output_shape(
    spatial_shape,
    kernel_size,
    strides=1,
    padding="valid",
    dilation_rate=1,
    owner="local_conv",
):
    """Output spatial shape of a local convolution over `spatial_shape`.

    Raises a `ValueError` naming the dimension when an output size is <= 0.
    """
    rank = len(spatial_shape)
    kernel_size = normalize_tuple(kernel_size, rank, "kernel_size", owner)
    strides = normalize_tuple(strides, rank, "strides", owner)
    dilation_rate = normalize_tuple(dilation_rate, rank, "dilation_rate", owner)
    padding = normalize_padding(padding, rank, owner)
    pads = local_conv_padding(
        spatial_shape, kernel_size, strides, padding, dilation_rate
    )
    out = []
    for axis, (n, k, s, d, (lo, hi)) in enumerate(
        zip(spatial_shape, kernel_size, strides, dilation_rate, pads)
    ):
        effective = (k - 1) * d + 1
        length = (n + lo + hi - effective) // s + 1
        if length <= 0:
            raise ValueError(
                f"{owner}: spatial dimension {axis} of the output would be "
                f"{length} (input size {n}, kernel_size {k}, dilation_rate {d}, "
                f"strides {s}, padding '{padding}'). The input is too small for "
                f"the kernel; use a larger input, a smaller kernel or "
                f"padding='same'."
            )
        out.append(length)
    return tuple(out)


def local_conv_kernel_shape(output_shape, kernel_size, channels, filters):
    """The kernel shape ``(P, K, filters)`` for the given output spatial shape."""
    return (
        math.prod(output_shape),
        math.prod(kernel_size) * channels,
        filters,
    )


# --------------------------------------------------------------------------
# The computation
# --------------------------------------------------------------------------


def local_conv(
    inputs,
    kernel,
    kernel_size,
    strides=1,
    padding="valid",
    dilation_rate=1,
    data_format=None,
):
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
        padding: ``"valid"``, ``"same"`` or (1D only) ``"causal"``,
            case-insensitive. Output sizes and the split of ``same`` padding
            are those of `keras.layers.Conv*D`.
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
):
    """`local_conv`, plus an optional `(P, filters)` bias added in place.

    The layers pass their bias here so that it is added while the result is
    still position-major, before the final transpose.
    """
    input_shape = tuple(inputs.shape)
    rank = len(input_shape) - 2
    if rank not in (1, 2, 3):
        raise ValueError(
            f"{owner}: `inputs` must have rank 3, 4 or 5 (batch, 1 to 3 spatial "
            f"dimensions, channels). Received inputs of shape {input_shape}"
        )
    kernel_size = normalize_tuple(kernel_size, rank, "kernel_size", owner)
    strides = normalize_tuple(strides, rank, "strides", owner)
    dilation_rate = normalize_tuple(dilation_rate, rank, "dilation_rate", owner)
    check_strides_and_dilation(strides, dilation_rate, owner)
    padding = normalize_padding(padding, rank, owner)
    data_format = normalize_data_format(data_format, owner)

    channels_last = data_format == "channels_last"
    if channels_last:
        spatial_shape, channels = input_shape[1:-1], input_shape[-1]
        to_spatial_first = (*range(1, rank + 1), 0, rank + 1)
    else:
        spatial_shape, channels = input_shape[2:], input_shape[1]
        to_spatial_first = (*range(2, rank + 2), 0, 1)
    if any(n is None for n in spatial_shape) or channels is None:
        raise ValueError(
            f"{owner}: the spatial dimensions and the channel dimension of "
            f"`inputs` must be known. Received inputs of shape {input_shape} "
            f"(data_format='{data_format}')"
        )
    output_shape = local_conv_output_shape(
        spatial_shape, kernel_size, strides, padding, dilation_rate, owner
    )
    expected = local_conv_kernel_shape(output_shape, kernel_size, channels, None)
    kernel_shape = tuple(kernel.shape)
    if len(kernel_shape) != 3 or kernel_shape[:2] != expected[:2]:
        raise ValueError(
            f"{owner}: `kernel` must have shape (P, K, filters) = "
            f"({expected[0]}, {expected[1]}, filters) for inputs of shape "
            f"{input_shape}, kernel_size={kernel_size}, strides={strides}, "
            f"padding='{padding}', dilation_rate={dilation_rate} (P = prod of "
            f"output shape {output_shape}, K = prod(kernel_size) * {channels} "
            f"channels). Received kernel of shape {kernel_shape}"
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
    num_positions, patch_size, filters = kernel_shape

    # (*spatial, channels, batch) with the spatial axes flattened: every
    # input pixel is one (channels, batch) row, so a single gather of rows
    # builds all patches at once, already laid out (P, K, batch) for the
    # matmul. Its gradient is one scatter-add, where per-offset slices would
    # each cost a full-size zero tensor in the backward pass (torch, TF), and
    # batch last spares a transpose of the patches (benchmarks/, issue 4).
    *spatial_axes, batch_axis, channel_axis = to_spatial_first
    x = ops.transpose(inputs, (*spatial_axes, channel_axis, batch_axis))
    pads = local_conv_padding(
        spatial_shape, kernel_size, strides, padding, dilation_rate
    )
    if any(lo or hi for lo, hi in pads):
        x = ops.pad(x, (*pads, (0, 0), (0, 0)))
    padded_shape = [n + lo + hi for n, (lo, hi) in zip(spatial_shape, pads)]
    # Rows of channels * batch values: merging these two axes makes torch
    # copy the transposed input into contiguous rows, which its gather and
    # scatter-add need to go at full speed (2x, measured in benchmarks/).
    x = ops.reshape(x, (math.prod(padded_shape), -1))

    # Row of the padded input read by (output position, kernel offset), both
    # row-major: the start of each output window plus each offset in it.
    row_stride = np.cumprod([1, *padded_shape[:0:-1]])[::-1]
    window_starts = np.zeros((), np.int64)
    offsets = np.zeros((), np.int64)
    for n, k, s, d, step in zip(
        output_shape, kernel_size, strides, dilation_rate, row_stride
    ):
        window_starts = np.add.outer(window_starts, np.arange(n) * s * step)
        offsets = np.add.outer(offsets, np.arange(k) * d * step)
    rows = np.add.outer(window_starts.ravel(), offsets.ravel()).ravel()
    patches = ops.take(x, rows.astype("int32"), axis=0)  # (P * taps, C * batch)
    if channels_last:  # K ordered (offsets..., channel): already so
        patches = ops.reshape(patches, (num_positions, patch_size, -1))
    else:  # K ordered (channel, offsets...)
        taps = math.prod(kernel_size)
        patches = ops.reshape(patches, (num_positions, taps, channels, -1))
        patches = ops.transpose(patches, (0, 2, 1, 3))
        patches = ops.reshape(patches, (num_positions, patch_size, -1))

    # (P, filters, K) @ (P, K, batch): the kernel's transpose is a view or is
    # folded into the matmul by every backend.
    outputs = ops.matmul(ops.transpose(kernel, (0, 2, 1)), patches)
    if bias is not None:
        outputs = outputs + ops.expand_dims(bias, -1)
    outputs = ops.reshape(outputs, (*output_shape, filters, -1))
    if channels_last:
        return ops.transpose(outputs, (rank + 1, *range(rank), rank))
    return ops.transpose(outputs, (rank + 1, rank, *range(rank)))
