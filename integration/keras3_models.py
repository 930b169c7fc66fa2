"""Save and load models holding every locally connected layer, per backend.

Run as a script under one backend (`KERAS_BACKEND=... python
integration/keras3_models.py save DIR [NAME...]` or `... load FILE.keras
FILE.npz`): the cross-backend tests start it in subprocesses, and
`nox -s keras3_fixtures` uses it to write the committed `.keras` files saved
under each backend, ``<NAME>_<backend>.keras`` for each model of `MODELS`
(all of them unless NAMEs are given). The ``quantized`` model is one of them
where Keras can quantize these layers (Keras >= 3.13).
"""

import os
import sys

import keras
import numpy as np

import keras_localconn  # noqa: F401  (registers the layers for safe_mode loading)
from keras_localconn import (
    LocallyConnected1D,
    LocallyConnected1DTranspose,
    LocallyConnected2D,
    LocallyConnected2DTranspose,
    LocallyConnected3D,
    LocallyConnected3DTranspose,
)
from keras_localconn.layers._quantization import HAS_QUANTIZATION_CONFIGS

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


TRANSPOSE_INPUT_SHAPE = (4, 4, 3)


def build_transpose_model():
    """The transposed layers: both data formats, same/valid, strides,
    output_padding and dilation, 1D-3D."""
    keras.utils.set_random_seed(11)
    inputs = keras.Input(TRANSPOSE_INPUT_SHAPE)
    x = LocallyConnected2DTranspose(
        4, 3, strides=2, padding="same", activation="relu", bias_initializer="normal"
    )(inputs)  # (8, 8, 4)
    x = keras.layers.Permute((3, 1, 2))(x)  # (4, 8, 8): channels_first below
    x = LocallyConnected2DTranspose(
        3, (2, 3), data_format="channels_first", dilation_rate=(1, 2)
    )(x)  # (3, 9, 12)
    sequence = keras.layers.Reshape((27, 12))(x)
    sequence = LocallyConnected1DTranspose(2, 3, strides=2, output_padding=1)(
        sequence
    )  # (56, 2)
    volume = keras.layers.Reshape((2, 7, 4, 2))(sequence)
    outputs = LocallyConnected3DTranspose(2, 2, use_bias=False)(volume)  # (3, 8, 5, 2)
    return keras.Model(inputs, outputs)


def build_quantized_model():
    """`build_model` with its four layers quantized, each in another mode:
    int8 (the inputs too, one scale per sample), weight-only int8, int4 in
    Keras' default blocks of 128 rows of K (one block here, with a zero
    point), int4 with one scale per (position, filter)."""
    model = build_model()
    local = (LocallyConnected1D, LocallyConnected2D, LocallyConnected3D)
    layers = [layer for layer in model.layers if isinstance(layer, local)]
    quantize_arguments = [
        dict(mode="int8"),
        dict(
            config=keras.quantizers.Int8QuantizationConfig(
                weight_quantizer=None, activation_quantizer=None
            )
        ),
        dict(mode="int4"),
        dict(config=keras.quantizers.Int4QuantizationConfig(block_size=-1)),
    ]
    assert len(layers) == len(quantize_arguments), layers
    for layer, arguments in zip(layers, quantize_arguments):
        layer.quantize(**arguments)
    return model


MODELS = {
    "model": (build_model, INPUT_SHAPE),
    "transpose": (build_transpose_model, TRANSPOSE_INPUT_SHAPE),
}
if HAS_QUANTIZATION_CONFIGS:  # Keras >= 3.13 quantizes these layers
    MODELS["quantized"] = (build_quantized_model, INPUT_SHAPE)


def save(directory, *names):
    """Writes ``<name>_<backend>.keras`` and ``.npz`` for each model named."""
    backend = keras.backend.backend()
    for name in names or MODELS:
        build, input_shape = MODELS[name]
        model = build()
        x = np.random.default_rng(0).normal(size=(3, *input_shape)).astype("float32")
        model.save(os.path.join(directory, f"{name}_{backend}.keras"))
        np.savez(
            os.path.join(directory, f"{name}_{backend}.npz"),
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
