"""The entry points that read a Keras 2 `.h5` file: `load_model`, `load_weights`.

They tie the other modules together and add the file path to their errors,
once, here.
"""

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import keras

from keras_localconn.layers import BaseLocallyConnected
from keras_localconn.legacy import _assign, _config, _hdf5
from keras_localconn.legacy._convert import convert_weights


@contextlib.contextmanager
def _about_file(path):
    """Prefix every `ValueError` raised inside with the file path."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def load_model(
    filepath: str | os.PathLike,
    custom_objects: Mapping[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> keras.Model:
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
            Nothing is returned half-loaded. The message starts with the
            file path.
    """
    path = _hdf5.existing_path(filepath)
    with _about_file(path):
        return _load_model(path, custom_objects, compile, safe_mode)


def _load_model(path, custom_objects, compile, safe_mode):
    with _hdf5.open_hdf5(path) as file:
        model_config = _hdf5.json_attribute(file, "model_config")
        if model_config is None:
            raise ValueError(
                "no model config: it is a weights-only file "
                "(`model.save_weights`). Build the model with keras_localconn "
                "layers and call `keras_localconn.legacy.load_weights` with "
                "the model and this file."
            )
        training_config = _hdf5.json_attribute(file, "training_config")
        stored = _hdf5.read_weights(_hdf5.weights_group(file))

    _config.check_model_config(model_config, custom_objects)
    keras2_configs = {
        entry["config"]["name"]: entry
        for entry in model_config["config"]["layers"]
        if entry["class_name"] in _config.KERAS2_LAYERS
    }
    model = _config.model_from_config(model_config, custom_objects, safe_mode)
    converted = {}
    for layer in model.layers:
        if isinstance(layer, BaseLocallyConnected):
            if layer.name not in stored:
                raise ValueError(f"no weights stored for layer '{layer.name}'")
            converted[layer.name] = convert_weights(
                stored[layer.name].arrays,
                keras2_configs[layer.name],
                tuple(layer.input.shape),
            )
    paddings = {name: c.zero_padding for name, c in converted.items() if c.zero_padding}
    if paddings:
        model_config = _config.insert_zero_padding(model_config, paddings)
        model = _config.model_from_config(model_config, custom_objects, safe_mode)

    _assign.assign(
        _assign.match_weights(
            model, stored, lambda layer, arrays: converted[layer.name].weights
        )
    )
    if compile and training_config is not None:
        model.compile(**_config.compile_arguments(training_config, custom_objects))
    return model


def load_weights(model: keras.Model, filepath: str | os.PathLike) -> None:
    """Load a Keras 2 weights `.h5` file into a model of this package's layers.

    The counterpart of Keras 2's `model.save_weights("....h5")`: layers that
    have weights are matched in order, as Keras does for `.h5` weights. Each
    `LocallyConnected1D`/`2D` of `model` must be built with the Keras 2
    layer's `kernel_size`, `strides`, `padding` and `data_format`; the Keras 2
    `implementation` is recognised from the stored kernel's shape. A full
    Keras 2 model file is accepted too (its weights are used), and so is the
    model `load_model` returns, with its `<name>_keras2_padding` layers.

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
            with `padding="same"`: see `convert_weights`). The message starts
            with the file path.
    """
    path = _hdf5.existing_path(filepath)
    with _about_file(path):
        if not model.built:
            raise ValueError(
                f"cannot load into model '{model.name}': the model is not "
                f"built. Call it on an input (or give it an `Input`) first."
            )
        with _hdf5.open_hdf5(path) as file:
            stored = _hdf5.read_weights(_hdf5.weights_group(file))
        convert = _assign.converter_for_model(model)
        _assign.assign(_assign.match_weights(model, stored, convert))
