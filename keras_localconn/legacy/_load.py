"""The entry points that read a Keras 2 file: `load_model`, `load_weights`.

They tie the other modules together and add the file path to their errors,
once, here.
"""

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import keras

from keras_localconn.legacy import _assign, _config, _formats, _layer


@contextlib.contextmanager
def _about_file(path):
    """Prefix every `ValueError` and `ImportError` raised inside with the path."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    except ImportError as error:
        raise ImportError(f"{path}: {error}") from error


def load_model(
    filepath: str | os.PathLike,
    custom_objects: Mapping[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> keras.Model:
    """Load a Keras 2 model that holds locally connected layers.

    Like `keras.models.load_model`, for the files Keras 2 (tf.keras,
    tf-keras) wrote: an `.h5` model (`model.save("m.h5")`), a `.keras`
    archive (`model.save("m.keras")`, tf-keras 2.13+) or a TensorFlow
    SavedModel directory (`model.save("dir")`, the default of TensorFlow
    2.0-2.15, read with TensorFlow, which must be installed). The form is
    recognised from the content, not the name. `LocallyConnected1D` and
    `LocallyConnected2D` become this package's layers, at any depth (nested
    models, wrappers such as `TimeDistributed`, your own layer classes), with
    their weights converted from any `implementation`. A `same`-padded layer
    that Keras 2 padded otherwise than Keras 3 does (`kernel_size // 2` zeros
    first) gets Keras 2's padding as explicit `(before, after)` pairs, so
    that it computes what it computed in Keras 2.

    Args:
        filepath: `str` or `os.PathLike`, the Keras 2 file or SavedModel
            directory.
        custom_objects: dict mapping names to custom classes or functions
            used by the model, as for `keras.models.load_model`: your layer
            classes, ported to Keras 3. The names `LocallyConnected1D` and
            `LocallyConnected2D` always mean this package's layers.
        compile: whether to compile the model with the file's training
            configuration (optimizer, loss, metrics), if it has one. The
            optimizer starts fresh: Keras 2 optimizer state is not imported.
        safe_mode: as for `keras.models.load_model`: False allows the
            deserialization of `Lambda` layers' code.

    Returns:
        A Keras 3 model. A Keras 3 `.keras` file is loaded as
        `keras.models.load_model` loads it.

    Raises:
        FileNotFoundError: if `filepath` does not exist.
        ImportError: for a SavedModel, if TensorFlow is not installed.
        ValueError: if the file is no Keras 2 model (weights only, truncated,
            not a Keras file, a SavedModel without Keras metadata), holds a
            layer neither Keras 3, this package nor `custom_objects`
            provides, or weights that do not fit the model. Nothing is
            returned half-loaded. The message starts with the file path.
    """
    path = _formats.existing_path(filepath)
    with _about_file(path):
        return import_model(path, custom_objects, compile, safe_mode)[0]


def import_model(
    path: str,
    custom_objects: Mapping[str, Any] | None,
    compile: bool,
    safe_mode: bool,
    progress: Callable[[str], None] | None = None,
) -> tuple[keras.Model, _layer.Keras2Import | None]:
    """`load_model`, also returning what was converted (None for Keras 3 files).

    `progress`, if given, is called with a line about each step.
    """
    say = progress or (lambda message: None)
    say(f"reading {path}")
    file = _formats.read(path)
    if file.model_config is None:
        raise ValueError(
            f"a weights-only file ({file.kind}): it holds no model config. "
            f"Build the model with keras_localconn layers and call "
            f"keras_localconn.legacy.load_weights(model, path)."
        )
    if _is_keras3(file):
        with _formats.named_for_keras(path, ".keras") as keras_path:
            model = keras.saving.load_model(
                keras_path, custom_objects, compile, safe_mode
            )
        return model, None
    say(
        f"{file.kind}, written by Keras {file.keras_version or '2'}: building the model"
    )
    _config.check_model_config(file.model_config, custom_objects)
    model = _config.model_from_config(file.model_config, custom_objects, safe_mode)
    say(f"loading the weights of {len(model.weights)} variables")
    with _layer.importing() as record:
        _load_weights(model, path, file, record, say)
    if compile and file.training_config is not None:
        model.compile(**_config.compile_arguments(file.training_config, custom_objects))
    return model, record


def _is_keras3(file):
    return file.kind == _formats.ARCHIVE and str(file.keras_version or "2")[0] != "2"


def _load_weights(model, path, file, record, say):
    """Load `file`'s weights into `model`, all or none."""
    if file.stored is not None:
        _assign.assign(
            _assign.match_weights(
                model,
                file.stored,
                _assign.converter_for_model(model, record),
                progress=say,
            )
        )
        return
    # Weights by object path: Keras' own loader walks the model and hands
    # each layer its arrays (`load_own_variables`, which converts Keras 2's).
    suffix = ".keras" if file.kind == _formats.ARCHIVE else ".weights.h5"
    before = model.get_weights()
    try:
        with _formats.named_for_keras(path, suffix) as keras_path:
            model.load_weights(keras_path)
    except Exception:
        model.set_weights(before)
        raise


def load_weights(model: keras.Model, filepath: str | os.PathLike) -> None:
    """Load a Keras 2 weights file into a model of this package's layers.

    The counterpart of Keras 2's `model.save_weights`, in any of its forms:
    `.h5` weights (`save_weights("w.h5")`) or an `.h5` model, whose layers
    are matched in order as Keras does for `.h5` files; `.weights.h5`
    (tf-keras 2.13+) or a `.keras` archive, matched by the objects' paths
    as Keras does for those; a SavedModel directory (needs TensorFlow). The
    form is recognised from the content. Locally connected layers may sit at
    any depth (nested models, wrappers, your own layer classes); each must be
    built with the Keras 2 layer's `kernel_size`, `strides`, `padding` and
    `data_format`. The Keras 2 `implementation` is recognised from the stored
    kernel's shape. A `same`-padded layer that Keras 2 padded otherwise than
    Keras 3 is given Keras 2's padding as explicit `(before, after)` pairs
    (its weights' shapes do not change).

    Nothing is half-loaded: on error `model` (weights and paddings) is left
    as it was.

    Args:
        model: a built Keras 3 model.
        filepath: `str` or `os.PathLike`, the Keras 2 file or SavedModel
            directory.

    Raises:
        FileNotFoundError: if `filepath` does not exist.
        ImportError: for a SavedModel, if TensorFlow is not installed.
        ValueError: if the file is not a readable Keras 2 file, or its
            weights do not fit `model` (layer count, weight shapes, a kernel
            of no Keras 2 layout). The message starts with the file path.
    """
    path = _formats.existing_path(filepath)
    with _about_file(path):
        if not model.built:
            raise ValueError(
                f"cannot load into model '{model.name}': the model is not "
                f"built. Call it on an input (or give it an `Input`) first."
            )
        file = _formats.read(path)
        if _is_keras3(file):
            raise ValueError(
                f"a Keras {file.keras_version} file, not a Keras 2 one: load "
                f"it with model.load_weights(path)."
            )
        with _layer.importing() as record:
            _load_weights(model, path, file, record, lambda message: None)
