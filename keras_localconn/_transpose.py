"""The transposed locally connected convolution, on `keras.ops`.

`local_conv_transpose` is to `local_conv` what `keras.ops.conv_transpose` is
to `keras.ops.conv`: the adjoint with respect to the input. Where the forward
op gathers every (position, kernel offset) row of its input and contracts the
patches with each position's kernel, this one contracts each input position
with its kernel first, giving one contribution per (position, offset), and
adds every contribution into the output row that the forward op would have
read, in one scatter-add. Then it drops the padding. The number of ops does
not grow with the number of positions nor with the kernel size.
"""

import inspect
import math

import keras
from keras import ops as kops

from keras_localconn import _arguments, _shapes

__all__ = ["local_conv_transpose"]

# `keras.ops.scatter_update(..., reduction="add")` (Keras >= 3.14) is the
# backends' native scatter-add (XLA scatter, `tensor_scatter_nd_add`,
# `index_put_(accumulate=True)`): measured the fastest formulation under
# tensorflow, jax and torch. Older Keras has no scatter-add that is one op on
# every backend (torch's `scatter` loops over the indices in Python and its
# `segment_sum` runs 4-6x slower): there the contributions are gathered back
# per output row and summed, which every Keras 3 can do.
SCATTER_ADD = "reduction" in inspect.signature(kops.scatter_update).parameters


def local_conv_transpose(
    inputs,
    kernel,
    kernel_size,
    strides=1,
    padding="valid",
    output_padding=None,
    dilation_rate=1,
    data_format=None,
):
    """Transposed locally connected N-D convolution (unshared weights), no bias.

    The adjoint of `local_conv` with respect to its input: for a kernel `W`,
    ``local_conv_transpose(y, W, ...)`` is the gradient of
    ``sum(y * local_conv(x, W, ...))`` with respect to ``x``. It maps each
    input position to a window of the output, as `keras.ops.conv_transpose`
    does, except that every input position has its own filters; with one
    kernel copied to every position it equals `keras.layers.Conv*DTranspose`.
    Works for 1, 2 and 3 spatial dimensions on every Keras backend.

    Args:
        inputs: Tensor of rank N + 2, ``(batch, *spatial, channels)`` if
            `data_format` is ``"channels_last"`` or ``(batch, channels,
            *spatial)`` if ``"channels_first"``. Spatial sizes must be static.
        kernel: Tensor of shape ``(P, K, channels)``: ``P`` is the product of
            the *input* spatial sizes (row-major order of input positions),
            ``K = prod(kernel_size) * filters`` with ``filters`` the output
            channels, ordered as `local_conv`'s kernel: (kernel offsets...,
            filter) for ``channels_last``, (filter, kernel offsets...) for
            ``channels_first``. It is the kernel of the `local_conv` that maps
            the output of this op back to its input.
        kernel_size: int or tuple of N ints, the window size.
        strides: int or tuple of N ints, the upsampling factor. Defaults to 1.
        padding: ``"valid"`` or ``"same"``, case-insensitive. Output sizes are
            those of `keras.layers.Conv*DTranspose`: ``"same"`` gives
            ``input * strides``.
        output_padding: None, or an int or tuple of N ints, each ``>= 0`` and
            smaller than the stride of its axis: how many positions to add at
            the end of each output axis, as in `keras.layers.Conv*DTranspose`.
            None lets the sizes follow from `padding`.
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
    >>> from keras_localconn.ops import local_conv_transpose
    >>> y = np.ones((2, 3, 4), "float32")  # batch 2, length 3, 4 channels
    >>> kernel = np.ones((3, 2 * 5, 4), "float32")  # 3 positions, K=2*5, 4 in
    >>> x = local_conv_transpose(y, kernel, kernel_size=2, strides=2)
    >>> tuple(x.shape)  # length 3 * 2, 5 filters
    (2, 6, 5)
    >>> float(x[0, 0, 0])
    4.0
    """
    return _local_conv_transpose(
        inputs,
        kernel,
        kernel_size,
        strides,
        padding,
        output_padding,
        dilation_rate,
        data_format,
    )


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
    """`_shapes.transpose_geometry` of arguments checked and normalised here."""
    rank = len(spatial_shape)
    (
        kernel_size,
        strides,
        padding,
        output_padding,
        dilation_rate,
    ) = _arguments.normalize_transpose_geometry(
        rank, kernel_size, strides, padding, output_padding, dilation_rate, owner
    )
    return _shapes.transpose_geometry(
        tuple(spatial_shape),
        filters,
        kernel_size,
        strides,
        padding,
        output_padding,
        dilation_rate,
        owner,
    )


def _local_conv_transpose(
    inputs,
    kernel,
    kernel_size,
    strides=1,
    padding="valid",
    output_padding=None,
    dilation_rate=1,
    data_format=None,
    bias=None,
    owner="local_conv_transpose",
):
    """`local_conv_transpose`, plus an optional ``(prod(out), filters)`` bias.

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
    kernel_shape = tuple(kernel.shape)
    taps = math.prod(
        _arguments.normalize_tuple(kernel_size, rank, "kernel_size", owner)
    )
    positions = math.prod(spatial_shape)
    if (
        len(kernel_shape) != 3
        or kernel_shape[0] != positions
        or kernel_shape[2] != channels
        or kernel_shape[1] is None
        or kernel_shape[1] % taps
    ):
        raise ValueError(
            f"{owner}: `kernel` must have shape (P, K, channels) = ({positions}, "
            f"{taps} * filters, {channels}) for inputs of shape {input_shape} "
            f"(P = prod of input spatial shape {tuple(spatial_shape)}, "
            f"K = prod(kernel_size) * filters, channels = {channels} input "
            f"channels). Received kernel of shape {kernel_shape}"
        )
    geo = transpose_geometry(
        spatial_shape,
        kernel_shape[1] // taps,
        kernel_size,
        strides,
        padding,
        output_padding,
        dilation_rate,
        owner,
    )
    for name, tensor in (("inputs", inputs), ("kernel", kernel)):
        # Every backend's matmul takes bool operands and returns a logical
        # or-of-ands, which is no convolution: refuse rather than mislead.
        if keras.backend.standardize_dtype(tensor.dtype) == "bool":
            raise ValueError(
                f"{owner}: `{name}` must have a numeric dtype (float16, "
                f"bfloat16, float32, float64 or an integer type); "
                f"local_conv_transpose multiplies and sums. Received {name} of "
                f"dtype bool; cast it first, e.g. keras.ops.cast({name}, "
                f"'float32')"
            )
    return _matmul_scatter(
        inputs, kernel, bias, geo, data_format == "channels_last", SCATTER_ADD
    )


def _matmul_scatter(inputs, kernel, bias, geo, channels_last, scatter_add):
    """The computation, for the forward geometry `geo` of the adjoint."""
    rank = geo.rank
    filters = geo.channels
    num_positions, taps = geo.num_positions, geo.taps
    # (*spatial, channels, batch) flattened to (P, channels, batch): batch
    # last, as in the forward op, so that the contributions come out of one
    # batched matmul as rows of (filters * batch) values.
    if channels_last:
        to_spatial_first = (*range(1, rank + 1), rank + 1, 0)
    else:
        to_spatial_first = (*range(2, rank + 2), 1, 0)
    y = kops.transpose(inputs, to_spatial_first)
    y = kops.reshape(y, (num_positions, kernel.shape[-1], -1))
    contributions = kops.matmul(kernel, y)  # (P, K, batch)
    if not channels_last:  # K ordered (filter, offsets...): offsets first
        contributions = kops.reshape(contributions, (num_positions, filters, taps, -1))
        contributions = kops.transpose(contributions, (0, 2, 1, 3))
    contributions = kops.reshape(contributions, (num_positions * taps, -1))

    num_rows = math.prod(geo.spatial_shape)
    if scatter_add:
        rows = _shapes.unpadded_rows(geo)
        # Contributions that land in the padding go to one extra row, dropped.
        cropped = bool(rows.size) and int(rows.max()) == num_rows
        # kops.shape: the batch may be unknown while tracing (TensorFlow).
        zeros = kops.zeros(
            (num_rows + cropped, kops.shape(contributions)[-1]), contributions.dtype
        )
        outputs = kops.scatter_update(
            zeros, rows[:, None], contributions, reduction="add"
        )
        if cropped:
            outputs = outputs[:num_rows]
    else:
        table = _shapes.contributing_rows(geo)
        # Empty slots of the table point one row past the end: a zero row,
        # added by `pad` (jax 0.4.30's partitioner got a concatenate followed
        # by this gather wrong when the contributions were sharded over
        # positions: integration/test_distribution.py caught it).
        contributions = kops.pad(contributions, ((0, 1), (0, 0)))
        outputs = kops.take(contributions, table.reshape(-1), axis=0)
        outputs = kops.sum(kops.reshape(outputs, (*table.shape, -1)), axis=1)

    outputs = kops.reshape(outputs, (num_rows, filters, -1))
    if bias is not None:
        outputs = outputs + kops.expand_dims(bias, -1)
    outputs = kops.reshape(outputs, (*geo.spatial_shape, filters, -1))
    if channels_last:
        return kops.transpose(outputs, (rank + 1, *range(rank), rank))
    return kops.transpose(outputs, (rank + 1, rank, *range(rank)))
