"""Import Keras 2 (tf.keras) models and weights that hold locally connected layers.

Keras 3 dropped `LocallyConnected1D` and `LocallyConnected2D`, so Keras 2
`.h5` files that use them no longer load. This module reads those files with
h5py and rebuilds them from this package's layers:

- `load_model(filepath)`: a Keras 2 full-model `.h5` file -> a Keras 3 model
  whose predictions equal the Keras 2 model's.
- `load_weights(model, filepath)`: a Keras 2 weights `.h5` file -> an existing
  Keras 3 model built from this package's layers.
- `convert_weights(weights, config, input_shape)`: the NumPy-level conversion
  of one Keras 2 layer's weights, for porting by hand.

Keras 2 stored a locally connected kernel in one of three layouts, chosen by
the layer's `implementation` argument; all three become this package's layout
(Keras 2's implementation 1). Two Keras 2 behaviours are reproduced rather
than "fixed", so that imported models compute what they computed before:

- `padding="same"` (implementations 2 and 3 only) put `kernel_size // 2`
  zeros before each axis. Keras 3 splits `same` padding like `Conv` does,
  which differs for even kernel sizes and for strides > 1; such a layer is
  imported as a `ZeroPadding1D`/`ZeroPadding2D` with Keras 2's padding
  followed by the locally connected layer with `padding="valid"`.
- with `channels_first`, Keras 2 added its `(*out, filters)` bias through a
  raw reshape to `(filters, *out)`, not a transpose; the bias values are
  permuted on import so that each output gets the number Keras 2 added there.
"""

import contextlib
import errno
import json
import math
import os
from typing import NamedTuple

import h5py
import keras
import numpy as np

from keras_localconn import _arguments, _shapes
from keras_localconn.layers import (
    BaseLocallyConnected,
    LocallyConnected1D,
    LocallyConnected2D,
)

__all__ = ["ConvertedWeights", "convert_weights", "load_model", "load_weights"]

# The Keras 2 class names this module maps, and the layers they become.
KERAS2_LAYERS = {
    "LocallyConnected1D": LocallyConnected1D,
    "LocallyConnected2D": LocallyConnected2D,
}
ZERO_PADDING_LAYERS = {1: "ZeroPadding1D", 2: "ZeroPadding2D"}


# --------------------------------------------------------------------------
# One layer's weights (NumPy only)
# --------------------------------------------------------------------------


class ConvertedWeights(NamedTuple):
    """One Keras 2 locally connected layer, in this package's terms.

    Attributes:
        weights: `[kernel, bias]` (or `[kernel]` without bias) as NumPy
            arrays in this package's layout, ready for `layer.set_weights`.
        padding: the `padding` to give this package's layer: `"valid"` or
            `"same"`.
        zero_padding: `None`, or per-axis `(before, after)` zero padding
            Keras 2 applied that Keras 3's `"same"` does not reproduce: put a
            `keras.layers.ZeroPadding1D`/`ZeroPadding2D` with this padding
            (and the layer's `data_format`) in front of the layer, whose
            `padding` is then `"valid"`.
    """

    weights: list
    padding: str
    zero_padding: tuple | None


def keras2_padding(spatial_shape, kernel_size, strides, padding):
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


def convert_weights(weights, config, input_shape):
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
    kernel_size, strides, padding, dilation_rate = _arguments.normalize_geometry(
        rank,
        config["kernel_size"],
        config.get("strides", 1),
        config.get("padding", "valid"),
        config.get("dilation_rate", 1),
        owner,
    )
    data_format = _arguments.normalize_data_format(config.get("data_format"), owner)
    implementation = config.get("implementation", 1)
    use_bias = config.get("use_bias", True)
    if padding == "causal" or dilation_rate != (1,) * rank:
        raise ValueError(
            f"{owner}: Keras 2 locally connected layers had neither 'causal' "
            f"padding nor dilation. Received padding={padding!r}, "
            f"dilation_rate={dilation_rate}"
        )

    channels_last = data_format == "channels_last"
    spatial_shape, channels = _shapes.split_input_shape(input_shape, data_format)
    pads = keras2_padding(spatial_shape, kernel_size, strides, padding)
    padded_shape = tuple(n + lo + hi for n, (lo, hi) in zip(spatial_shape, pads))
    output_shape = _shapes.geometry(
        padded_shape, channels, kernel_size, strides, "valid", dilation_rate, owner
    ).output_shape

    expected_count = 2 if use_bias else 1
    if len(weights) != expected_count:
        raise ValueError(
            f"{owner}: expected {expected_count} weight array(s) "
            f"(kernel{', bias' if use_bias else ''}), received {len(weights)}"
        )
    weights = [np.asarray(w) for w in weights]
    geometry = _Geometry(
        spatial_shape, channels, kernel_size, strides, pads, output_shape, owner
    )
    kernel = _convert_kernel(weights[0], geometry, implementation, channels_last)
    converted = [kernel]
    if use_bias:
        converted.append(_convert_bias(weights[1], geometry, kernel, channels_last))

    keras3_same = _shapes.padding_amounts(
        spatial_shape, kernel_size, strides, "same", dilation_rate
    )
    if padding == "valid":
        return ConvertedWeights(converted, "valid", None)
    if pads == keras3_same:
        return ConvertedWeights(converted, "same", None)
    return ConvertedWeights(converted, "valid", pads)


class _Geometry(NamedTuple):
    spatial_shape: tuple
    channels: int
    kernel_size: tuple
    strides: tuple
    pads: tuple
    output_shape: tuple
    owner: str


def _receptive_fields(geometry):
    """For each (output position, kernel offset): the input position it reads.

    Returns `(flat_input_position, inside)`, both `(P, prod(kernel_size))`;
    `inside` is False where the offset falls on padding (Keras 2 had no
    weight there; this package's kernel gets a zero).
    """
    g = geometry
    num_positions = math.prod(g.output_shape)
    num_offsets = math.prod(g.kernel_size)
    outputs = np.stack(np.unravel_index(np.arange(num_positions), g.output_shape), -1)
    offsets = np.stack(np.unravel_index(np.arange(num_offsets), g.kernel_size), -1)
    before = np.array([lo for lo, _ in g.pads])
    positions = outputs[:, None, :] * np.array(g.strides) - before + offsets[None, :, :]
    spatial = np.array(g.spatial_shape)
    inside = np.all((positions >= 0) & (positions < spatial), axis=-1)
    clipped = np.clip(positions, 0, spatial - 1)
    flat = np.ravel_multi_index(tuple(np.moveaxis(clipped, -1, 0)), g.spatial_shape)
    return flat, inside


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
            f"{g.owner}: `implementation` must be 1, 2 or 3. "
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
            f"{g.owner}: an implementation-3 kernel is a vector of "
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
            f"{g.owner}: expected a bias of shape {expected} (output positions "
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
            f"{g.owner}: an implementation-{implementation} kernel for input "
            f"{g.spatial_shape} x {g.channels} channels, kernel_size "
            f"{g.kernel_size}, strides {g.strides} has shape {shown}; "
            f"received a kernel of shape {kernel.shape}"
        )


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a Keras 2 `.h5` model that holds locally connected layers.

    Like `keras.models.load_model` for a Keras 2 `.h5` file, except that
    `LocallyConnected1D`/`LocallyConnected2D` (any `implementation`,
    `padding`, `data_format`, `strides`, activation) become this package's
    layers, with their weights converted. A Keras 2 `same`-padded layer whose
    padding Keras 3 splits differently is preceded by a `ZeroPadding1D`/`2D`
    layer named `<layer name>_keras2_padding` (see the module docstring).

    Args:
        filepath: `str` or `os.PathLike`, the Keras 2 `.h5` model file.
        custom_objects: dict mapping names to custom classes or functions used
            by the model, as for `keras.models.load_model`. The names
            `LocallyConnected1D` and `LocallyConnected2D` always mean this
            package's layers.
        compile: whether to compile the model with the file's training
            configuration (optimizer, loss, metrics), if it has one. The
            optimizer starts fresh: Keras 2 optimizer state is not imported.
        safe_mode: as for `keras.models.load_model`: False allows the
            deserialization of `Lambda` layers' code.

    Returns:
        A Keras 3 `Sequential` or functional `Model`.

    Raises:
        FileNotFoundError: if `filepath` does not exist.
        ValueError: if the file is not a readable Keras 2 `.h5` model
            (weights only, not HDF5, truncated), holds a layer Keras 3 or
            this package cannot build, or weights that do not fit the model.
            Nothing is returned half-loaded.
    """
    path = _existing_path(filepath)
    with _open_hdf5(path) as file:
        model_config = _json_attribute(file, "model_config", path)
        if model_config is None:
            raise ValueError(
                f"{path} holds no model config: it is a weights-only file "
                f"(`model.save_weights`). Build the model with keras_localconn "
                f"layers and call `keras_localconn.legacy.load_weights(model, "
                f"{str(path)!r})`."
            )
        training_config = _json_attribute(file, "training_config", path)
        stored = _read_weights(_weights_group(file, path), path)

    _check_model_config(model_config, path, custom_objects)
    keras2_configs = {
        entry["config"]["name"]: entry
        for entry in model_config["config"]["layers"]
        if entry["class_name"] in KERAS2_LAYERS
    }
    model = _model_from_config(model_config, custom_objects, safe_mode, path)
    converted = {}
    for layer in model.layers:
        if isinstance(layer, BaseLocallyConnected):
            converted[layer.name] = _convert_layer(
                layer, stored, keras2_configs[layer.name], path
            )
    paddings = {name: c.zero_padding for name, c in converted.items() if c.zero_padding}
    if paddings:
        model_config = _insert_zero_padding(model_config, paddings)
        model = _model_from_config(model_config, custom_objects, safe_mode, path)

    assignments = _match_weights(
        model,
        stored,
        path,
        lambda layer, values: converted[layer.name].weights,
    )
    _assign(assignments)
    if compile and training_config is not None:
        _compile(model, training_config, custom_objects, path)
    return model


def load_weights(model, filepath):
    """Load a Keras 2 weights `.h5` file into a model of this package's layers.

    The counterpart of Keras 2's `model.save_weights("....h5")`: layers that
    have weights are matched in order, as Keras does for `.h5` weights. Each
    `LocallyConnected1D`/`2D` of `model` must be built with the Keras 2
    layer's `kernel_size`, `strides`, `padding` and `data_format`; the Keras 2
    `implementation` is recognised from the stored kernel's shape. A full
    Keras 2 model file is accepted too (its weights are used).

    Everything is read and converted before any weight is assigned: on error
    `model` is left untouched.

    Args:
        model: a built Keras 3 model (`Sequential` or functional).
        filepath: `str` or `os.PathLike`, the Keras 2 `.h5` file.

    Raises:
        FileNotFoundError: if `filepath` does not exist.
        ValueError: if the file is not a readable Keras 2 `.h5` file, or its
            weights do not fit `model` (layer count, weight shapes, or a
            `same`-padded layer whose Keras 2 padding Keras 3 cannot express
            with `padding="same"`: see `convert_weights`).
    """
    path = _existing_path(filepath)
    if not model.built:
        raise ValueError(
            f"Cannot load {path} into model '{model.name}': the model is not "
            f"built. Call it on an input (or give it an `Input`) first."
        )
    with _open_hdf5(path) as file:
        stored = _read_weights(_weights_group(file, path), path)

    def convert(layer, values):
        keras2_config = {**layer.get_config()}
        keras2_config["implementation"] = _infer_implementation(layer, values)
        converted = _convert_arrays(
            layer, values, keras2_config, tuple(layer.input.shape), path
        )
        if converted.zero_padding:
            raise ValueError(
                f"{path}: layer '{layer.name}' uses padding='same', which "
                f"Keras 2 split as {converted.zero_padding} (kernel_size // 2 "
                f"before) and Keras 3 splits differently. Build it as a "
                f"ZeroPadding{layer.rank}D({converted.zero_padding}) followed "
                f"by the layer with padding='valid' and use "
                f"`keras_localconn.legacy.convert_weights` on its arrays, or "
                f"load the full Keras 2 model with `load_model`."
            )
        return converted.weights

    _assign(_match_weights(model, stored, path, convert))


def _infer_implementation(layer, values):
    # impl 1: (P, K, filters); impl 2: one axis per input and output dim;
    # impl 3: a flat vector.
    ndim = np.ndim(values[0])
    return {3: 1, 2 * layer.rank + 2: 2, 1: 3}.get(ndim, 1)


def _convert_layer(layer, stored, keras2_config, path):
    values = stored.get(layer.name)
    if values is None:
        raise ValueError(f"{path}: no weights stored for layer '{layer.name}'")
    return _convert_arrays(
        layer, values.arrays, keras2_config, tuple(layer.input.shape), path
    )


def _convert_arrays(layer, values, keras2_config, input_shape, path):
    try:
        return convert_weights(values, keras2_config, input_shape)
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"{path}: cannot convert the weights of layer '{layer.name}': {error}"
        ) from error


class _StoredLayer(NamedTuple):
    names: list
    arrays: list


def _existing_path(filepath):
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(
            f"`filepath` must be a str or os.PathLike naming a Keras 2 .h5 "
            f"file. Received: filepath={filepath!r} of type "
            f"{type(filepath).__name__}"
        )
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(
            errno.ENOENT, f"No such Keras 2 .h5 file: '{path}'", path
        )
    if os.path.isdir(path):
        raise ValueError(
            f"{path} is a directory (a TensorFlow SavedModel?), not a Keras 2 "
            f".h5 file. Only .h5 files can be imported."
        )
    return path


@contextlib.contextmanager
def _open_hdf5(path):
    """`h5py.File(path, "r")`, with errors that say what the file is."""
    if not h5py.is_hdf5(path):
        kind = (
            " It looks like a zip archive (a Keras 3 `.keras` file? use "
            "`keras.models.load_model`)."
            if _starts_with(path, b"PK\x03\x04")
            else ""
        )
        raise ValueError(
            f"{path} is not an HDF5 file, so not a Keras 2 .h5 model or "
            f"weights file.{kind}"
        )
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(
            f"{path} could not be opened as HDF5 (truncated or corrupt?): {error}"
        ) from error
    with file:
        yield file


def _starts_with(path, magic):
    with open(path, "rb") as file:
        return file.read(len(magic)) == magic


def _json_attribute(file, name, path):
    value = file.attrs.get(name)
    if value is None:
        return None
    if hasattr(value, "decode"):
        value = value.decode("utf-8")
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: the `{name}` attribute is not JSON: {error}"
        ) from error


def _weights_group(file, path):
    if "layer_names" in file.attrs:
        return file
    if "model_weights" in file:
        return file["model_weights"]
    raise ValueError(
        f"{path} is HDF5 but holds no Keras 2 weights (no `layer_names` "
        f"attribute). Keras 3 `.weights.h5` files load with "
        f"`model.load_weights`."
    )


def _string_list(attrs, name):
    # h5py caps attribute sizes; Keras 2 split long lists into name0, name1...
    if name in attrs:
        chunks = [attrs[name]]
    else:
        chunks, index = [], 0
        while f"{name}{index}" in attrs:
            chunks.append(attrs[f"{name}{index}"])
            index += 1
    return [
        item.decode("utf-8") if hasattr(item, "decode") else str(item)
        for chunk in chunks
        for item in chunk
    ]


def _read_weights(group, path):
    """{layer name: _StoredLayer}, in file order, layers without weights left out."""
    stored = {}
    try:
        for name in _string_list(group.attrs, "layer_names"):
            layer_group = group[name]
            names = _string_list(layer_group.attrs, "weight_names")
            if names:
                arrays = [np.asarray(layer_group[n]) for n in names]
                stored[name] = _StoredLayer(names, arrays)
    except (OSError, KeyError, RuntimeError) as error:
        raise ValueError(
            f"{path}: could not read the weights (truncated or corrupt file?): {error}"
        ) from error
    return stored


def _check_model_config(model_config, path, custom_objects):
    """Refuse up front what cannot be mapped, naming the layer."""
    if not isinstance(model_config, dict) or model_config.get("class_name") not in (
        "Sequential",
        "Functional",
        "Model",
    ):
        found = (
            model_config.get("class_name") if isinstance(model_config, dict) else None
        )
        raise ValueError(
            f"{path}: the model config describes a {found!r}, not a "
            f"Sequential or functional model (subclassed models have no "
            f"config that can be rebuilt)."
        )
    known = {**(custom_objects or {}), **KERAS2_LAYERS}
    for entry in model_config["config"]["layers"]:
        class_name = entry["class_name"]
        name = entry["config"].get("name", entry.get("name"))
        if (
            class_name not in known
            and not hasattr(keras.layers, class_name)
            and class_name not in ("Sequential", "Functional", "Model")
            and keras.saving.get_registered_object(class_name) is None
        ):
            raise ValueError(
                f"{path}: layer '{name}' is a {class_name}, which neither Keras "
                f"3 nor keras_localconn provides. Pass its class in "
                f"`custom_objects`."
            )
        inner = json.dumps(entry["config"])
        for lc_name in KERAS2_LAYERS:
            if class_name not in KERAS2_LAYERS and f'"{lc_name}"' in inner:
                raise ValueError(
                    f"{path}: layer '{name}' ({class_name}) contains a "
                    f"{lc_name}. Only locally connected layers at the top level "
                    f"of a Sequential or functional model can be imported: "
                    f"nested models and wrappers (TimeDistributed, ...) "
                    f"holding them are not supported."
                )


def _model_from_config(model_config, custom_objects, safe_mode, path):
    # Keras 3's own reader of Keras 2 configs (`batch_input_shape`, Keras 2
    # initializer and regularizer dicts, ...): the one `keras.models.load_model`
    # uses for `.h5` files.
    from keras.src.legacy.saving import saving_options, saving_utils
    from keras.src.saving import serialization_lib

    objects = {**(custom_objects or {}), **KERAS2_LAYERS}
    config = json.loads(json.dumps(model_config))  # the reader edits in place
    try:
        with saving_options.keras_option_scope(use_legacy_config=True):
            with serialization_lib.SafeModeScope(safe_mode):
                return saving_utils.model_from_config(config, custom_objects=objects)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"{path}: Keras 3 could not rebuild the model from its config: {error}"
        ) from error


def _insert_zero_padding(model_config, paddings):
    """A copy of `model_config` with explicit zero padding before some layers."""
    config = json.loads(json.dumps(model_config))
    layers = []
    for entry in config["config"]["layers"]:
        name = entry["config"]["name"]
        if name in paddings:
            rank = len(paddings[name])
            pad_name = f"{name}_keras2_padding"
            padding = paddings[name][0] if rank == 1 else paddings[name]
            pad_entry = {
                "class_name": ZERO_PADDING_LAYERS[rank],
                "config": {
                    "name": pad_name,
                    "padding": padding,
                    "data_format": entry["config"]["data_format"],
                    "dtype": entry["config"].get("dtype", "float32"),
                },
            }
            input_shape = entry["config"].pop("batch_input_shape", None)
            if input_shape is not None:
                pad_entry["config"]["batch_input_shape"] = input_shape
            if "inbound_nodes" in entry:  # functional: rewire through the padding
                pad_entry["name"] = pad_name
                pad_entry["inbound_nodes"] = entry["inbound_nodes"]
                entry["inbound_nodes"] = [
                    [[pad_name, index, 0, {}]]
                    for index in range(len(entry["inbound_nodes"]))
                ]
            entry["config"]["padding"] = "valid"
            layers.append(pad_entry)
        layers.append(entry)
    config["config"]["layers"] = layers
    return config


def _match_weights(model, stored, path, convert_locally_connected):
    """(variable, value) pairs for every weight of `model`, all checked.

    Layers with weights are matched in order, as Keras matches `.h5` weights.
    """
    targets = [layer for layer in model.layers if layer.weights]
    names = list(stored)
    if len(names) != len(targets):
        raise ValueError(
            f"{path} holds weights for {len(names)} layer(s) ({', '.join(names)}), "
            f"but model '{model.name}' has {len(targets)} layer(s) with weights "
            f"({', '.join(layer.name for layer in targets)}): the file was saved "
            f"from a different architecture."
        )
    assignments = []
    for layer, name in zip(targets, names):
        values = stored[name].arrays
        if not isinstance(layer, BaseLocallyConnected) and any(
            isinstance(inner, BaseLocallyConnected)
            for inner in layer._flatten_layers(include_self=False)
        ):
            raise ValueError(
                f"{path}: layer '{layer.name}' of model '{model.name}' contains "
                f"a locally connected layer. Only locally connected layers at "
                f"the top level of the model can be loaded: nested models and "
                f"wrappers holding them are not supported."
            )
        if isinstance(layer, BaseLocallyConnected):
            values = convert_locally_connected(layer, values)
        variables = layer.trainable_weights + layer.non_trainable_weights
        if len(values) != len(variables):
            raise ValueError(
                f"{path}: layer '{name}' in the file has {len(values)} weight(s), "
                f"layer '{layer.name}' of the model expects {len(variables)}: "
                f"the file was saved from a different architecture."
            )
        for variable, value in zip(variables, values):
            if tuple(variable.shape) != tuple(value.shape):
                raise ValueError(
                    f"{path}: weight '{variable.path}' of layer '{layer.name}' "
                    f"has shape {tuple(variable.shape)}, the file's layer "
                    f"'{name}' stores shape {tuple(value.shape)}: the file was "
                    f"saved from a different architecture."
                )
            assignments.append((variable, value))
    return assignments


def _assign(assignments):
    for variable, value in assignments:
        variable.assign(value)


def _compile(model, training_config, custom_objects, path):
    from keras.src.legacy.saving import saving_utils

    try:
        arguments = saving_utils.compile_args_from_training_config(
            training_config, {**(custom_objects or {}), **KERAS2_LAYERS}
        )
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"{path}: could not rebuild the training configuration (optimizer, "
            f"loss, metrics): {error}. Load with compile=False and compile "
            f"the model yourself."
        ) from error
    model.compile(**arguments)
