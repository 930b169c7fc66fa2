"""Save and load a model holding every locally connected layer, per backend.

Run as a script under one backend (`KERAS_BACKEND=... python
integration/keras3_models.py save DIR` or `... load FILE.keras FILE.npz`):
the cross-backend tests start it in subprocesses, and `nox -s keras3_fixtures`
uses it to write the committed `.keras` files saved under each backend.
"""

import os
import sys

import keras
import numpy as np

import keras_localconn  # noqa: F401  (registers the layers for safe_mode loading)
from keras_localconn import LocallyConnected1D, LocallyConnected2D, LocallyConnected3D

INPUT_SHAPE = (9, 8, 2)


def build_model():
    """Both data formats, same/causal padding, strides and dilation, 1D-3D."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input(INPUT_SHAPE)
    x = LocallyConnected2D(4, 3, padding="same", strides=(2, 1), activation="relu")(
        inputs
    )
    x = keras.layers.Permute((3, 1, 2))(x)  # (4, 5, 8): channels_first below
    x = LocallyConnected2D(
        3, (2, 3), data_format="channels_first", dilation_rate=(1, 2)
    )(x)  # (3, 4, 4)
    volume = keras.layers.Reshape((3, 4, 4, 1))(x)
    volume = LocallyConnected3D(2, 2, use_bias=False)(volume)  # (2, 3, 3, 2)
    sequence = keras.layers.Reshape((9, 4))(volume)
    outputs = LocallyConnected1D(2, 3, padding="causal", dilation_rate=2)(sequence)
    # Not compiled: Keras records a torch-saved optimizer under its torch-only
    # class path, which other backends cannot import (a Keras limitation).
    return keras.Model(inputs, outputs)


def save(directory):
    model = build_model()
    x = np.random.default_rng(0).normal(size=(3, *INPUT_SHAPE)).astype("float32")
    backend = keras.backend.backend()
    model.save(os.path.join(directory, f"model_{backend}.keras"))
    np.savez(
        os.path.join(directory, f"model_{backend}.npz"),
        inputs=x,
        outputs=model.predict(x, verbose=0),
    )


def load_and_compare(model_path, data_path):
    """Loads with safe_mode and returns the max abs difference of predictions."""
    model = keras.saving.load_model(model_path, safe_mode=True)
    data = np.load(data_path)
    predictions = model.predict(data["inputs"], verbose=0)
    return float(np.max(np.abs(predictions - data["outputs"])))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "save":
        save(*args)
    elif command == "load":
        print(f"max_abs_difference={load_and_compare(*args)!r}")
    else:
        raise SystemExit(f"unknown command {command!r}; expected 'save' or 'load'")
