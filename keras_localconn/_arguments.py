"""Argument validation shared by `ops`, the layers and the Keras 2 import.

Every `standardize_*` function (Keras 3's word for it) returns the
standardised value or raises a `ValueError` that starts with `owner` (the
public function or the layer that received the argument), quotes the value
received and says what is allowed.
"""

import keras
import numpy as np

from keras_localconn import _shapes

PADDINGS = ("valid", "same", "causal", "circular")
DATA_FORMATS = ("channels_last", "channels_first")


def is_int(value):
    """Whether `value` is an integer (a NumPy one too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def standardize_positive_int(value, name, owner):
    """`value` as a positive Python int (NumPy integers accepted)."""
    if not is_int(value) or value <= 0:
        raise ValueError(
            f"{owner}: `{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def standardize_tuple(value, rank, name, owner, minimum=1):
    """`value` as a tuple of `rank` ints ``>= minimum``, or a `ValueError`."""
    if is_int(value):
        values = (int(value),) * rank
    else:
        try:
            values = tuple(value)
        except TypeError:
            values = None
        if values is None or not all(is_int(v) for v in values):
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
    if any(v < minimum for v in values):
        allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(
            f"{owner}: every element of `{name}` must be {allowed}. "
            f"Received: {name}={value!r}"
        )
    return values


def standardize_padding(padding, rank, owner):
    """`padding` as a lower-cased name or as `rank` ``(before, after)`` pairs.

    Names: ``"valid"``, ``"same"``, ``"circular"`` and (1D) ``"causal"``,
    case-insensitive. Anything else that is not a string is explicit zero
    padding, taken the way `keras.layers.ZeroPadding*D` takes it: an int (the
    same on every side), a tuple of `rank` ints (symmetric per axis), a tuple
    of `rank` ``(before, after)`` pairs or, in 1D, one ``(before, after)``
    pair; lists are accepted too (a JSON config turns tuples into lists).
    Explicit padding is returned as a tuple of `rank` pairs of ints, which is
    hashable (the shape caches key on it) and serialises in `get_config`.
    """
    if isinstance(padding, str):
        allowed = tuple(p for p in PADDINGS if rank == 1 or p != "causal")
        if padding.lower() not in allowed:
            raise ValueError(
                f"{owner}: `padding` must be one of {allowed} "
                f"({'causal only for 1D; ' if rank > 1 else ''}case-insensitive) "
                f"or explicit zero padding: an int, a tuple of {rank} int(s) or "
                f"a tuple of {rank} (before, after) pair(s). "
                f"Received: padding={padding!r}"
            )
        return padding.lower()
    return _explicit_padding(padding, rank, owner)


def _explicit_padding(padding, rank, owner):
    def refuse(why):
        raise ValueError(
            f"{owner}: explicit `padding` must be an int, a tuple of {rank} "
            f"int(s) or a tuple of {rank} (before, after) pair(s) of "
            f"non-negative ints, the way keras.layers.ZeroPadding{rank}D takes "
            f"it ({why}). Received: padding={padding!r}"
        )

    if is_int(padding):
        pairs = ((padding, padding),) * rank
    elif isinstance(padding, (tuple, list)):
        items = tuple(padding)
        if rank == 1 and len(items) == 2 and all(is_int(v) for v in items):
            items = (items,)  # ZeroPadding1D's (before, after)
        if len(items) != rank:
            refuse(f"one entry per spatial dimension, {len(items)} given")
        pairs = []
        for item in items:
            if is_int(item):
                pairs.append((item, item))
            elif (
                isinstance(item, (tuple, list))
                and len(item) == 2
                and all(is_int(v) for v in item)
            ):
                pairs.append(tuple(item))
            else:
                refuse(f"entry {item!r} is neither an int nor a pair of ints")
        pairs = tuple(pairs)
    else:
        refuse(f"got a {type(padding).__name__}")
    if any(v < 0 for pair in pairs for v in pair):
        refuse("negative padding would crop; use keras.layers.Cropping layers")
    return tuple((int(before), int(after)) for before, after in pairs)


def standardize_data_format(data_format, owner):
    """`data_format`, with `None` meaning `keras.config.image_data_format()`."""
    if data_format is None:
        data_format = keras.config.image_data_format()
    if not isinstance(data_format, str) or data_format.lower() not in DATA_FORMATS:
        raise ValueError(
            f"{owner}: `data_format` must be one of {DATA_FORMATS} or None. "
            f"Received: data_format={data_format!r}"
        )
    return data_format.lower()


def check_strides_and_dilation(strides, dilation_rate, owner):
    """Keras convolutions refuse strides > 1 with dilation > 1 on one axis."""
    for axis, (s, d) in enumerate(zip(strides, dilation_rate)):
        if s > 1 and d > 1:
            raise ValueError(
                f"{owner}: `strides` > 1 is not compatible with `dilation_rate` > 1 "
                f"on the same axis (axis {axis}). Received: strides={strides}, "
                f"dilation_rate={dilation_rate}"
            )


def standardize_window(rank, kernel_size, strides, padding, dilation_rate, owner):
    """The four window arguments of a local convolution, checked together."""
    kernel_size = standardize_tuple(kernel_size, rank, "kernel_size", owner)
    strides = standardize_tuple(strides, rank, "strides", owner)
    dilation_rate = standardize_tuple(dilation_rate, rank, "dilation_rate", owner)
    check_strides_and_dilation(strides, dilation_rate, owner)
    padding = standardize_padding(padding, rank, owner)
    return kernel_size, strides, padding, dilation_rate


# --------------------------------------------------------------------------
# The transposed local convolution
# --------------------------------------------------------------------------

TRANSPOSE_PADDINGS = ("valid", "same")


def standardize_transpose_padding(padding, owner):
    """Lower-cased ``"valid"`` or ``"same"``, as `keras.layers.Conv*DTranspose`."""
    if not isinstance(padding, str) or padding.lower() not in TRANSPOSE_PADDINGS:
        raise ValueError(
            f"{owner}: `padding` must be one of {TRANSPOSE_PADDINGS} "
            f"(case-insensitive; a transposed convolution has no 'causal'). "
            f"Received: padding={padding!r}"
        )
    return padding.lower()


def standardize_output_padding(output_padding, strides, owner):
    """None, or a tuple of ints with ``0 <= output_padding < strides`` per axis."""
    if output_padding is None:
        return None
    values = standardize_tuple(
        output_padding, len(strides), "output_padding", owner, minimum=0
    )
    for axis, (extra, stride) in enumerate(zip(values, strides)):
        if not 0 <= extra < stride:
            raise ValueError(
                f"{owner}: every element of `output_padding` must be >= 0 and "
                f"strictly less than the `strides` of its axis (axis {axis}: "
                f"output_padding {extra}, strides {stride}). Received: "
                f"output_padding={output_padding!r}, strides={strides}"
            )
    return values


def standardize_transpose_window(
    rank, kernel_size, strides, padding, output_padding, dilation_rate, owner
):
    """The five window arguments of a transposed local convolution, checked."""
    kernel_size = standardize_tuple(kernel_size, rank, "kernel_size", owner)
    strides = standardize_tuple(strides, rank, "strides", owner)
    dilation_rate = standardize_tuple(dilation_rate, rank, "dilation_rate", owner)
    check_strides_and_dilation(strides, dilation_rate, owner)
    padding = standardize_transpose_padding(padding, owner)
    output_padding = standardize_output_padding(output_padding, strides, owner)
    return kernel_size, strides, padding, output_padding, dilation_rate


# --------------------------------------------------------------------------
# Whole calls: the tensors and the geometry they imply
# --------------------------------------------------------------------------


def standardize_inputs(inputs, kernel, data_format, owner):
    """`(data_format, spatial_shape, channels)` of the tensors of one call.

    The check both ops share: `inputs` of rank 3 to 5 with static spatial and
    channel sizes, and numeric dtypes for `inputs` and `kernel`.
    """
    input_shape = tuple(inputs.shape)
    if len(input_shape) not in (3, 4, 5):
        raise ValueError(
            f"{owner}: `inputs` must have rank 3, 4 or 5 (batch, 1 to 3 spatial "
            f"dimensions, channels). Received inputs of shape {input_shape}"
        )
    data_format = standardize_data_format(data_format, owner)
    spatial_shape, channels = _shapes.split_input_shape(input_shape, data_format)
    if any(n is None for n in spatial_shape) or channels is None:
        raise ValueError(
            f"{owner}: the spatial dimensions and the channel dimension of "
            f"`inputs` must be known. Received inputs of shape {input_shape} "
            f"(data_format='{data_format}')"
        )
    for name, tensor in (("inputs", inputs), ("kernel", kernel)):
        # Every backend's matmul takes bool operands and returns a logical
        # or-of-ands, which is no convolution: refuse rather than mislead.
        if keras.backend.standardize_dtype(tensor.dtype) == "bool":
            raise ValueError(
                f"{owner}: `{name}` must have a numeric dtype (float16, "
                f"bfloat16, float32, float64 or an integer type); a local "
                f"convolution multiplies and sums. Received {name} of dtype "
                f"bool; cast it first, e.g. keras.ops.cast({name}, 'float32')"
            )
    return data_format, tuple(spatial_shape), channels


def standardize_geometry(
    spatial_shape, channels, kernel_size, strides, padding, dilation_rate, owner
):
    """The `_shapes.Geometry` of a local convolution, its arguments checked."""
    kernel_size, strides, padding, dilation_rate = standardize_window(
        len(spatial_shape), kernel_size, strides, padding, dilation_rate, owner
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


def standardize_transpose_geometry(
    spatial_shape,
    filters,
    kernel_size,
    strides,
    padding,
    output_padding,
    dilation_rate,
    owner,
):
    """The forward `_shapes.Geometry` whose adjoint a transposed local
    convolution is (`_shapes.transpose_geometry`), its arguments checked."""
    (
        kernel_size,
        strides,
        padding,
        output_padding,
        dilation_rate,
    ) = standardize_transpose_window(
        len(spatial_shape),
        kernel_size,
        strides,
        padding,
        output_padding,
        dilation_rate,
        owner,
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
