"""Which Keras 2 file a path holds, recognised from its content, and its parts.

Keras 2 (tf.keras, tf-keras) saved a model in any of five forms:

| form | written by | weights found by |
|---|---|---|
| HDF5 model | `model.save("m.h5")` | layer order |
| HDF5 weights | `model.save_weights("w.h5")` | layer order |
| SavedModel directory | `model.save("dir")`, the default of TF 2.0-2.15 | layer order |
| Keras archive | `model.save("m.keras")`, tf-keras 2.13+ (a zip) | object path |
| v3 weights | `model.save_weights("m.weights.h5")`, tf-keras 2.13+ | object path |

Files whose weights go by layer order are read here into `_hdf5.StoredLayer`s;
those whose weights go by object path are read by Keras' own loader, which
hands each layer its arrays (`load_own_variables`). Errors are `ValueError`s
that describe the content; the entry points prefix them with the file path.
"""

import contextlib
import errno
import json
import os
import shutil
import tempfile
import zipfile
from typing import NamedTuple

import h5py

from keras_localconn.legacy import _hdf5

HDF5_MODEL = "Keras 2 HDF5 model"
HDF5_WEIGHTS = "Keras 2 HDF5 weights"
SAVEDMODEL = "TensorFlow SavedModel"
ARCHIVE = "Keras archive (.keras)"
V3_WEIGHTS = "Keras weights (.weights.h5)"


class Keras2File(NamedTuple):
    """What one file holds.

    Attributes:
        kind: one of the five forms above.
        model_config: the model's config (`{"class_name", "config"}`), or
            None for weights-only forms.
        training_config: Keras 2's `training_config` form (optimizer, loss,
            metrics), or None.
        stored: `{top-level layer name: StoredLayer}` for the forms whose
            weights go by layer order, else None.
        keras_version: the Keras version that wrote the file, where it says.
    """

    kind: str
    model_config: dict | None
    training_config: dict | None
    stored: dict | None
    keras_version: str | None


def existing_path(filepath):
    """`filepath` as a `str`, checked to name an existing file or directory."""
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(
            f"`filepath` must be a str or os.PathLike naming a Keras 2 file "
            f"(.h5, .keras, .weights.h5) or SavedModel directory. Received: "
            f"filepath={filepath!r} of type {type(filepath).__name__}"
        )
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(
            errno.ENOENT, f"No such Keras 2 file or directory: '{path}'", path
        )
    return path


def read(path):
    """The `Keras2File` at `path`, whatever its form."""
    if os.path.isdir(path):
        return _read_savedmodel(path)
    if zipfile.is_zipfile(path) or _starts_with(path, b"PK\x03\x04"):
        return _read_archive(path)
    if h5py.is_hdf5(path):
        return _read_hdf5(path)
    raise ValueError(
        "neither HDF5 (.h5, .weights.h5), nor a zip archive (.keras), nor a "
        "SavedModel directory: not a file Keras 2 wrote."
    )


def _starts_with(path, magic):
    with open(path, "rb") as file:
        return file.read(len(magic)) == magic


def _read_hdf5(path):
    with _hdf5.open_hdf5(path) as file:
        if "layer_names" in file.attrs or "model_weights" in file:
            model_config = _hdf5.json_attribute(file, "model_config")
            return Keras2File(
                HDF5_MODEL if model_config is not None else HDF5_WEIGHTS,
                model_config,
                _hdf5.json_attribute(file, "training_config"),
                _hdf5.read_weights(_hdf5.weights_group(file)),
                _hdf5.text_attribute(file, "keras_version"),
            )
        if "layers" in file or "vars" in file:
            return Keras2File(V3_WEIGHTS, None, None, None, None)
    raise ValueError(
        "HDF5, but it holds no Keras weights (neither a `layer_names` "
        "attribute nor `layers` and `vars` groups)."
    )


def _read_archive(path):
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise ValueError(
                    f"a zip archive, but not a Keras model file: it holds "
                    f"{sorted(names)[:5]}, not config.json and model.weights.h5."
                )
            config = json.loads(archive.read("config.json"))
            metadata = (
                json.loads(archive.read("metadata.json"))
                if "metadata.json" in names
                else {}
            )
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as error:
        raise ValueError(
            f"a zip archive that cannot be read (truncated or corrupt?): {error}"
        ) from error
    except json.JSONDecodeError as error:
        raise ValueError(f"its config.json is not JSON: {error}") from error
    compile_config = config.pop("compile_config", None)
    training_config = None
    if compile_config and compile_config.get("optimizer") is not None:
        training_config = {
            "optimizer_config": compile_config["optimizer"],
            "loss": compile_config.get("loss"),
            "metrics": compile_config.get("metrics"),
            "weighted_metrics": compile_config.get("weighted_metrics"),
            "loss_weights": compile_config.get("loss_weights"),
        }
    return Keras2File(
        ARCHIVE, config, training_config, None, metadata.get("keras_version")
    )


def _read_savedmodel(path):
    from keras_localconn.legacy import _savedmodel  # TensorFlow, on first use

    model_config, training_config, stored = _savedmodel.read_savedmodel(path)
    return Keras2File(SAVEDMODEL, model_config, training_config, stored, None)


@contextlib.contextmanager
def named_for_keras(path, suffix):
    """`path`, or a link to it whose name ends in `suffix`.

    Keras' `load_model`/`load_weights` recognise a file by its name; this
    module recognised it by its content, whatever it is called.
    """
    if path.endswith(suffix):
        yield path
        return
    directory = tempfile.mkdtemp(prefix="keras_localconn_")
    try:
        link = os.path.join(directory, f"file{suffix}")
        try:
            os.symlink(os.path.abspath(path), link)
        except OSError:  # no symlinks here: a copy does as well
            shutil.copyfile(path, link)
        yield link
    finally:
        shutil.rmtree(directory, ignore_errors=True)
