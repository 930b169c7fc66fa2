"""One Keras 2 locally connected layer's weights, converted with NumPy only.

Keras 2 stored a locally connected kernel in one of three layouts, chosen by
the layer's `implementation` argument; all three become this package's layout
(Keras 2's implementation 1). No file and no Keras model is involved here.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from keras_localconn import _arguments, _shapes


class ConvertedWeights(NamedTuple):
    """One Keras 2 locally connected layer, in this package's terms.

    Attributes:
        weights: `[kernel, bias]` (or `[kernel]` without bias) as NumPy
            arrays in this package's layout, ready for `layer.set_weights`.
        padding: the `padding` to give this package's layer: `"valid"`,
            `"same"`, or the explicit `(before, after)` pairs it was given.
        zero_padding: `None`, or per-axis `(before, after)` zero padding
            Keras 2 applied that Keras 3's `"same"` does not reproduce: put a
            `keras.layers.ZeroPadding1D`/`ZeroPadding2D` with this padding
            (and the layer's `data_format`) in front of the layer, whose
            `padding` is then `"valid"`.
    """

    weights: list[np.ndarray]
    padding: str
    zero_padding: tuple[tuple[int, int], ...] | None


def _keras2_padding(spatial_shape, kernel_size, strides, padding):
    """Per-axis `(before, after)` zeros matching Keras 2's receptive fields.

    Keras 2 (`tf_keras.src.utils.conv_utils.conv_connected_inputs`) connects
    output position `o` to inputs `[o*s - k//2, o*s - k//2 + k)` clipped to
    the input under `same`, and `[o*s, o*s + k)` under `valid`; its `same`
    output length is `ceil(n / s)`.
    """
    if padding == "valid":
        return tuple((0, 0) for _ in spatial_shape)
    pads = []
    for n, k, s in zip(spatial_shape, kernel_size, strides):
        before = k // 2
        after = max((-(-n // s) - 1) * s + k - before - n, 0)
        pads.append((before, after))
    return tuple(pads)


def convert_weights(
    weights: Sequence[ArrayLike],
    config: Mapping[str, Any],
    input_shape: Sequence[int | None],
) -> ConvertedWeights:
    """Convert one Keras 2 `LocallyConnected1D`/`2D` layer's weights.

    Args:
        weights: the Keras 2 layer's weights, `[kernel, bias]` or `[kernel]`
            (`layer.get_weights()`, or the arrays of its `.h5` group), saved
            with any `implementation`:
            1: kernel `(P, K, filters)`, already this package's layout;
            2: a dense kernel over all input and output positions, zero
            outside each receptive field, `(*in, channels, *out, filters)`
            with `channels_last` or `(channels, *in, filters, *out)` with
            `channels_first`; 3: a flat vector of the nonzeros of a sparse
            kernel, in the order of `tf_keras`'s `conv_utils.conv_kernel_idxs`.
        config: the Keras 2 layer config (`layer.get_config()`, or the
            `{"class_name": ..., "config": ...}` entry of a saved model
            config). Read: `kernel_size`, `strides`, `padding`,
            `data_format`, `use_bias`, `implementation` (default 1), `name`.
        input_shape: the layer's input shape, batch axis included, e.g.
            `(None, 28, 28, 3)` (`layer.input_shape` in Keras 2).

    Returns:
        A `ConvertedWeights`: the weights in this package's layout, the
        `padding` to build this package's layer with, and any explicit zero
        padding the layer needs in front of it (see `ConvertedWeights`).

    Raises:
        ValueError: if the arrays do not fit the config and input shape.

    Example:

    >>> import numpy as np
    >>> from keras_localconn.legacy import convert_weights
    >>> config = {"name": "lc", "kernel_size": [3], "strides": [1],
    ...           "padding": "same", "data_format": "channels_last",
    ...           "use_bias": True, "implementation": 2}
    >>> kernel = np.ones((5, 2, 5, 4), "float32")  # (steps, ch, out, filters)
    >>> bias = np.zeros((5, 4), "float32")
    >>> converted = convert_weights([kernel, bias], config, (None, 5, 2))
    >>> converted.weights[0].shape, converted.padding, converted.zero_padding
    ((5, 6, 4), 'same', None)
    """
    config = config.get("config", config)
    rank = len(input_shape) - 2
    name = config.get("name", "?")
    owner = f"Keras 2 layer '{name}'"
    if rank not in (1, 2):
        raise ValueError(
            f"{owner}: Keras 2 locally connected layers are 1D or 2D; expected "
            f"an input shape of rank 3 or 4 (batch included). Received "
            f"input_shape={tuple(input_shape)}"
        )
    if "kernel_size" not in config:
        raise ValueError(f"{owner}: the config has no `kernel_size`: {config}")
    kernel_size, strides, padding, dilation_rate = _arguments.standardize_window(
        rank,
        config["kernel_size"],
        config.get("strides", 1),
        config.get("padding", "valid"),
        config.get("dilation_rate", 1),
        owner,
    )
    data_format = _arguments.standardize_data_format(config.get("data_format"), owner)
    implementation = config.get("implementation", 1)
    use_bias = config.get("use_bias", True)
    if padding in ("causal", "circular") or dilation_rate != (1,) * rank:
        raise ValueError(
            f"{owner}: Keras 2 locally connected layers had neither 'causal' "
            f"nor 'circular' padding, nor dilation. Received padding={padding!r}, "
            f"dilation_rate={dilation_rate}"
        )

    channels_last = data_format == "channels_last"
    spatial_shape, channels = _shapes.split_input_shape(input_shape, data_format)
    pads = _keras2_padding(spatial_shape, kernel_size, strides, padding)
    # Keras 2's receptive fields are those of an explicitly padded convolution.
    geometry = _shapes.geometry(
        tuple(spatial_shape), channels, kernel_size, strides, pads, dilation_rate, owner
    )
    try:
        converted = _convert_arrays(
            weights, geometry, implementation, use_bias, channels_last
        )
    except ValueError as error:
        raise ValueError(f"{owner}: {error}") from error

    keras3_same = _shapes.padding_amounts(
        spatial_shape, kernel_size, strides, "same", dilation_rate
    )
    if padding == "valid" or not isinstance(padding, str):
        return ConvertedWeights(converted, padding, None)
    if pads == keras3_same:
        return ConvertedWeights(converted, "same", None)
    return ConvertedWeights(converted, "valid", pads)


def _convert_arrays(weights, geometry, implementation, use_bias, channels_last):
    expected_count = 2 if use_bias else 1
    if len(weights) != expected_count:
        raise ValueError(
            f"expected {expected_count} weight array(s) "
            f"(kernel{', bias' if use_bias else ''}), received {len(weights)}"
        )
    weights = [np.asarray(w) for w in weights]
    kernel = _convert_kernel(weights[0], geometry, implementation, channels_last)
    converted = [kernel]
    if use_bias:
        converted.append(_convert_bias(weights[1], geometry, kernel, channels_last))
    return converted


def _receptive_fields(geometry):
    """For each (output position, kernel offset): the input position it reads.

    Returns `(flat_input_position, inside)`, both `(P, taps)`; `inside` is
    False where the offset falls on padding (Keras 2 had no weight there;
    this package's kernel gets a zero), and the position is then 0.
    """
    rows = _shapes.unpadded_rows(geometry).reshape(geometry.num_positions, -1)
    inside = rows < math.prod(geometry.spatial_shape)
    return np.where(inside, rows, 0), inside


def _convert_kernel(kernel, geometry, implementation, channels_last):
    g = geometry
    num_positions = math.prod(g.output_shape)
    num_offsets = math.prod(g.kernel_size)
    channels, rank = g.channels, len(g.spatial_shape)
    patch_size = num_offsets * channels
    if implementation == 1:
        filters = kernel.shape[-1] if kernel.ndim == 3 else None
        _check_shape(kernel, (num_positions, patch_size, filters), g, 1)
        return kernel

    flat_inputs, inside = _receptive_fields(g)
    if implementation == 2:
        filters = None  # any, in the shape check
        if kernel.ndim == 2 * rank + 2:
            filters = kernel.shape[-1 if channels_last else rank + 1]
        if channels_last:
            expected = (*g.spatial_shape, channels, *g.output_shape, filters)
        else:
            expected = (channels, *g.spatial_shape, filters, *g.output_shape)
        _check_shape(kernel, expected, g, 2)
        if not channels_last:
            kernel = np.transpose(
                kernel,
                (*range(1, rank + 1), 0, *range(rank + 2, 2 * rank + 2), rank + 1),
            )
        dense = kernel.reshape(-1, channels, num_positions, filters)
        positions = np.arange(num_positions)[:, None]
        # (P, offsets, channels, filters); entries outside the Keras 2 mask
        # were multiplied by zero there and are ignored here.
        per_position = dense[flat_inputs, :, positions, :]
    elif implementation == 3:
        per_position = _scatter_sparse_kernel(
            kernel, g, flat_inputs, inside, channels_last
        )
    else:
        raise ValueError(
            f"`implementation` must be 1, 2 or 3. "
            f"Received: implementation={implementation!r}"
        )
    per_position = np.where(inside[:, :, None, None], per_position, 0)
    per_position = per_position.astype(kernel.dtype)
    if not channels_last:
        per_position = np.transpose(per_position, (0, 2, 1, 3))
    return per_position.reshape(num_positions, patch_size, -1)


def _scatter_sparse_kernel(values, geometry, flat_inputs, inside, channels_last):
    """Keras 2 implementation 3: the nonzeros, in sorted (out, in) index order."""
    g = geometry
    num_positions = math.prod(g.output_shape)
    num_inputs = math.prod(g.spatial_shape)
    per_filter = int(inside.sum()) * g.channels
    if values.ndim != 1 or per_filter == 0 or values.shape[0] % per_filter:
        raise ValueError(
            f"an implementation-3 kernel is a vector of "
            f"{per_filter} * filters values for this layer's geometry "
            f"(input {g.spatial_shape} x {g.channels} channels, kernel_size "
            f"{g.kernel_size}, strides {g.strides}). Received a kernel of "
            f"shape {values.shape}"
        )
    filters = values.shape[0] // per_filter
    shape = (num_positions, len(inside[0]), g.channels, filters)
    position, offset, channel, filter_ = np.indices(shape)
    connected = np.broadcast_to(inside[:, :, None, None], shape)
    flat_input = flat_inputs[position, offset]
    if channels_last:  # flat indices of (*out, filters) and (*in, channels)
        output_index = position * filters + filter_
        input_index = flat_input * g.channels + channel
    else:  # flat indices of (filters, *out) and (channels, *in)
        output_index = filter_ * num_positions + position
        input_index = channel * num_inputs + flat_input
    order = np.lexsort((input_index[connected], output_index[connected]))
    per_position = np.zeros(shape, values.dtype)
    per_position.reshape(-1)[np.flatnonzero(connected)[order]] = values
    return per_position


def _convert_bias(bias, geometry, kernel, channels_last):
    g = geometry
    filters = kernel.shape[-1]
    expected = (*g.output_shape, filters)
    if bias.shape != expected:
        raise ValueError(
            f"expected a bias of shape {expected} (output positions "
            f"x filters), received shape {bias.shape}"
        )
    if channels_last:
        return bias
    # Keras 2 reshaped (*out, filters) to (filters, *out) without a transpose.
    return np.moveaxis(bias.reshape(filters, *g.output_shape), 0, -1)


def _check_shape(kernel, expected, geometry, implementation):
    g = geometry
    matches = kernel.ndim == len(expected) and all(
        e is None or e == n for e, n in zip(expected, kernel.shape)
    )
    if not matches:
        shown = tuple("filters" if e is None else e for e in expected)
        raise ValueError(
            f"an implementation-{implementation} kernel for input "
            f"{g.spatial_shape} x {g.channels} channels, kernel_size "
            f"{g.kernel_size}, strides {g.strides} has shape {shown}; "
            f"received a kernel of shape {kernel.shape}"
        )
