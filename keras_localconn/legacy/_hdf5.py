"""Reading Keras 2 `.h5` files with h5py: configs and stored weight arrays.

Errors are `ValueError`s that describe the file's content; the entry points
in `keras_localconn.legacy` prefix them with the file path.
"""

import contextlib
import json
from typing import NamedTuple

import h5py
import numpy as np


class StoredLayer(NamedTuple):
    """One layer's weights as the file holds them, in the file's order."""

    names: list
    arrays: list


@contextlib.contextmanager
def open_hdf5(path):
    """`h5py.File(path, "r")`, with errors that say what the file is."""
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(
            f"could not be opened as HDF5 (truncated or corrupt?): {error}"
        ) from error
    with file:
        yield file


def text_attribute(file, name):
    """The string attribute `name` of the file; None if absent."""
    value = file.attrs.get(name)
    if hasattr(value, "decode"):
        value = value.decode("utf-8")
    return value


def json_attribute(file, name):
    """The JSON attribute `name` of the file, decoded; None if absent."""
    value = text_attribute(file, name)
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"the `{name}` attribute is not JSON: {error}") from error


def weights_group(file):
    """The HDF5 group holding the layers' weights, in either kind of file."""
    if "layer_names" in file.attrs:  # weights-only file
        return file
    if "model_weights" in file:  # full-model file
        return file["model_weights"]
    raise ValueError(
        "HDF5, but it holds no Keras 2 weights (no `layer_names` attribute). "
        "Keras 3 `.weights.h5` files load with `model.load_weights`."
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


def read_weights(group):
    """{layer name: StoredLayer}, in file order, layers without weights left out."""
    stored = {}
    try:
        for name in _string_list(group.attrs, "layer_names"):
            layer_group = group[name]
            names = _string_list(layer_group.attrs, "weight_names")
            if names:
                arrays = [np.asarray(layer_group[n]) for n in names]
                stored[name] = StoredLayer(names, arrays)
    except (OSError, KeyError, RuntimeError) as error:
        raise ValueError(
            f"could not read the weights (truncated or corrupt file?): {error}"
        ) from error
    return stored
