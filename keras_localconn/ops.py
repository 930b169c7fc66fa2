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
    spatial_shape, kernel_size, strides=1, padding="valid", dilation_rate=1
):
    """Per-axis ``(before, after)`` zero padding that `local_conv` applies.

    ``"valid"``: none. ``"same"``: output length ``ceil(n / stride)``, with
    the total padding split as `keras.layers.Conv*D` split it (the smaller
    half before). ``"causal"`` (1D): ``(kernel_size - 1) * dilation_rate``
    before, none after.

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
    spatial_shape, kernel_size, strides=1, padding="valid", dilation_rate=1
):
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
            f"strides={geo.strides}, padding='{padding}', "
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
    return _gather_matmul(inputs, kernel, bias, geo, data_format == "channels_last")


def _padded_spatial_first(inputs, geo, channels_last):
    """`inputs` as ``(*padded_spatial, channels, batch)``, padded per `geo`.

    The one place where padding is applied: every formulation starts here.
    """
    rank = geo.rank
    if channels_last:
        to_spatial_first = (*range(1, rank + 1), rank + 1, 0)
    else:
        to_spatial_first = (*range(2, rank + 2), 1, 0)
    x = kops.transpose(inputs, to_spatial_first)
    if any(lo or hi for lo, hi in geo.pads):
        x = kops.pad(x, (*geo.pads, (0, 0), (0, 0)))
    return x


def _gather_matmul(inputs, kernel, bias, geo, channels_last):
    rank = geo.rank
    filters = kernel.shape[-1]
    # (*spatial, channels, batch) with the spatial axes flattened: every
    # input pixel is one (channels, batch) row, so a single gather of rows
    # builds all patches at once, already laid out (P, K, batch) for the
    # matmul. Its gradient is one scatter-add, where per-offset slices would
    # each cost a full-size zero tensor in the backward pass (torch, TF), and
    # batch last spares a transpose of the patches (docs/performance.md).
    x = _padded_spatial_first(inputs, geo, channels_last)
    # Rows of channels * batch values: merging these two axes makes torch
    # copy the transposed input into contiguous rows, which its gather and
    # scatter-add need to go at full speed (2x, measured in benchmarks/).
    x = kops.reshape(x, (math.prod(geo.padded_shape), -1))
    patches = kops.take(x, _shapes.gather_rows(geo), axis=0)  # (P * taps, C * B)
    num_positions, patch_size = geo.num_positions, geo.patch_size
    if channels_last:  # K ordered (offsets..., channel): already so
        patches = kops.reshape(patches, (num_positions, patch_size, -1))
    else:  # K ordered (channel, offsets...)
        patches = kops.reshape(patches, (num_positions, geo.taps, geo.channels, -1))
        patches = kops.transpose(patches, (0, 2, 1, 3))
        patches = kops.reshape(patches, (num_positions, patch_size, -1))

    # (P, filters, K) @ (P, K, batch): the kernel's transpose is a view or is
    # folded into the matmul by every backend.
    outputs = kops.matmul(kops.transpose(kernel, (0, 2, 1)), patches)
    if bias is not None:
        outputs = outputs + kops.expand_dims(bias, -1)
    outputs = kops.reshape(outputs, (*geo.output_shape, filters, -1))
    if channels_last:
        return kops.transpose(outputs, (rank + 1, *range(rank), rank))
    return kops.transpose(outputs, (rank + 1, rank, *range(rank)))
