"""Save and load a model using circular and explicit padding, per backend.

Run as a module from the repository root, under one backend
(`KERAS_BACKEND=... python -m integration.padding_models save DIR` or
`... load FILE.keras FILE.npz`):
the cross-backend tests start it in subprocesses, and `nox -s keras3_fixtures`
writes the committed `padding_model_<backend>.keras` files with it.
"""

import os
import sys

import keras
import numpy as np

import keras_localconn  # noqa: F401  (registers the layers for safe_mode loading)
from integration.keras3_models import load_and_compare
from keras_localconn import LocallyConnected1D, LocallyConnected2D, LocallyConnected3D

INPUT_SHAPE = (9, 8, 2)


def build_model():
    """Circular and each form of explicit padding, both data formats, 1D-3D."""
    keras.utils.set_random_seed(11)
    inputs = keras.Input(INPUT_SHAPE)
    x = LocallyConnected2D(4, 3, padding="circular", strides=(2, 1))(inputs)
    x = keras.layers.Permute((3, 1, 2))(x)  # (4, 5, 8): channels_first below
    x = LocallyConnected2D(
        3,
        (2, 3),
        padding=((1, 0), (0, 2)),
        data_format="channels_first",
        dilation_rate=(1, 2),
    )(x)  # (3, 5, 6)
    volume = keras.layers.Reshape((3, 5, 6, 1))(x)
    volume = LocallyConnected3D(2, 2, padding=(1, 0, 1), strides=2)(volume)
    sequence = keras.layers.Reshape((-1, 2))(volume)
    sequence = LocallyConnected1D(3, 3, padding="circular", dilation_rate=2)(sequence)
    outputs = LocallyConnected1D(2, 2, padding=(0, 3), strides=2)(sequence)
    return keras.Model(inputs, outputs)


def save(directory):
    model = build_model()
    x = np.random.default_rng(0).normal(size=(3, *INPUT_SHAPE)).astype("float32")
    backend = keras.backend.backend()
    model.save(os.path.join(directory, f"padding_model_{backend}.keras"))
    np.savez(
        os.path.join(directory, f"padding_model_{backend}.npz"),
        inputs=x,
        outputs=model.predict(x, verbose=0),
    )


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "save":
        save(*args)
    elif command == "load":
        print(f"max_abs_difference={load_and_compare(*args)!r}")
    else:
        raise SystemExit(f"unknown command {command!r}; expected 'save' or 'load'")
