"""The transposed engine: transposed locally connected convolution on `keras.ops`.

`local_conv_transpose` is to `local_conv` what `keras.ops.conv_transpose` is
to `keras.ops.conv`: the adjoint with respect to the input. Where the forward
engine gathers every (position, kernel offset) row of its input and contracts
the patches with each position's kernel, this one contracts each input
position with its kernel first, giving one contribution per (position,
offset), and adds every contribution into the output row that the forward
engine would have read: one scatter-add where Keras has one (>= 3.14), else a
gather of each output row's contributions and a sum (which one:
`_schedule.adds_by_scatter`, which the ``scatter_add`` choice of
`keras_localconn.ops.formulation` pins). Then it drops the padding. The
number of ops grows neither with the number of positions nor with the
kernel size.
"""

import math

from keras import ops

from keras_localconn import _arguments, _schedule, _shapes


def local_conv_transpose(
    inputs,
    kernel,
    kernel_size,
    strides=1,
    padding="valid",
    output_padding=None,
    dilation_rate=1,
    data_format=None,
    *,
    bias=None,
    owner="local_conv_transpose",
):
    """`keras_localconn.ops.local_conv_transpose`, plus a bias.

    `bias`, ``(prod(out), filters)``, is added while the result is still
    position-major, before the final transpose.
    """
    geo, channels_last = checked_geometry(
        inputs,
        kernel,
        kernel_size,
        strides,
        padding,
        output_padding,
        dilation_rate,
        data_format,
        owner,
    )
    return _matmul_scatter(
        inputs, kernel, bias, geo, channels_last, _schedule.adds_by_scatter()
    )


def checked_geometry(
    inputs,
    kernel,
    kernel_size,
    strides,
    padding,
    output_padding,
    dilation_rate,
    data_format,
    owner,
):
    """`(geometry, channels_last)` of one call, every argument checked.

    The geometry is the forward one whose adjoint this call computes: its
    `spatial_shape` is this call's output, its `channels` the filters.
    """
    data_format, spatial_shape, channels = _arguments.standardize_inputs(
        inputs, kernel, data_format, owner
    )
    kernel_shape = tuple(kernel.shape)
    taps = math.prod(
        _arguments.standardize_tuple(
            kernel_size, len(spatial_shape), "kernel_size", owner
        )
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
            f"{taps} * filters, {channels}) for inputs of shape "
            f"{tuple(inputs.shape)} (P = prod of input spatial shape "
            f"{spatial_shape}, K = prod(kernel_size) * filters, channels = "
            f"{channels} input channels). Received kernel of shape {kernel_shape}"
        )
    geo = _arguments.standardize_transpose_geometry(
        spatial_shape,
        kernel_shape[1] // taps,
        kernel_size,
        strides,
        padding,
        output_padding,
        dilation_rate,
        owner,
    )
    return geo, data_format == "channels_last"


def output_shape(geo, batch, channels_last):
    """The shape `local_conv_transpose` returns for the forward `geo`."""
    if channels_last:
        return (batch, *geo.spatial_shape, geo.channels)
    return (batch, geo.channels, *geo.spatial_shape)


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
    y = ops.transpose(inputs, to_spatial_first)
    y = ops.reshape(y, (num_positions, kernel.shape[-1], -1))
    if hasattr(kernel, "decode"):  # an `_local_conv.EncodedKernel`: decoded
        kernel = kernel.rows(0, kernel.shape[0])  # whole, for the one matmul
    contributions = ops.matmul(kernel, y)  # (P, K, batch)
    if not channels_last:  # K ordered (filter, offsets...): offsets first
        contributions = ops.reshape(contributions, (num_positions, filters, taps, -1))
        contributions = ops.transpose(contributions, (0, 2, 1, 3))
    contributions = ops.reshape(contributions, (num_positions * taps, -1))

    num_rows = math.prod(geo.spatial_shape)
    if scatter_add:
        rows = _shapes.unpadded_rows(geo)
        # Contributions that land in the padding go to one extra row, dropped.
        cropped = bool(rows.size) and int(rows.max()) == num_rows
        # ops.shape: the batch may be unknown while tracing (TensorFlow).
        zeros = ops.zeros(
            (num_rows + cropped, ops.shape(contributions)[-1]), contributions.dtype
        )
        outputs = ops.scatter_update(
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
        contributions = ops.pad(contributions, ((0, 1), (0, 0)))
        outputs = ops.take(contributions, table.reshape(-1), axis=0)
        outputs = ops.sum(ops.reshape(outputs, (*table.shape, -1)), axis=1)

    outputs = ops.reshape(outputs, (num_rows, filters, -1))
    if bias is not None:
        outputs = outputs + ops.expand_dims(bias, -1)
    outputs = ops.reshape(outputs, (*geo.spatial_shape, filters, -1))
    if channels_last:
        return ops.transpose(outputs, (rank + 1, *range(rank), rank))
    return ops.transpose(outputs, (rank + 1, rank, *range(rank)))
