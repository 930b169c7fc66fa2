"""Small models holding locally connected layers, for the export tests.

Between them they cover the three ranks, strides, `same`/`causal` padding,
dilation, `channels_first`, biases and activations. Every weight, biases
included, is random: a zero bias would let an exporter drop the addition.
"""

import keras
import numpy as np

from keras_localconn import LocallyConnected1D, LocallyConnected2D, LocallyConnected3D


def sequence_model():
    inputs = keras.Input((12, 3))
    x = LocallyConnected1D(6, 3, strides=2, activation="relu")(inputs)
    x = LocallyConnected1D(4, 2, padding="causal")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    return with_random_weights(keras.Model(inputs, outputs))


def dilated_causal_sequence_model():
    inputs = keras.Input((10, 2))
    x = LocallyConnected1D(4, 3, padding="causal", dilation_rate=2)(inputs)
    x = LocallyConnected1D(3, 2, padding="same", activation="tanh")(x)
    return with_random_weights(keras.Model(inputs, x))


def image_model():
    inputs = keras.Input((9, 8, 2))
    x = LocallyConnected2D(5, 3, padding="same", activation="relu")(inputs)
    x = LocallyConnected2D(3, (2, 3), strides=2, data_format="channels_last")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    return with_random_weights(keras.Model(inputs, outputs))


def channels_first_image_model():
    inputs = keras.Input((2, 7, 6))
    x = LocallyConnected2D(4, 3, data_format="channels_first", dilation_rate=2)(inputs)
    return with_random_weights(keras.Model(inputs, keras.layers.Flatten()(x)))


def volume_model():
    inputs = keras.Input((5, 4, 6, 2))
    x = LocallyConnected3D(3, (2, 2, 3), activation="tanh")(inputs)
    return with_random_weights(keras.Model(inputs, keras.layers.Flatten()(x)))


def strided_channels_first_volume_model():
    inputs = keras.Input((2, 5, 6, 4))
    x = LocallyConnected3D(
        3, 2, strides=(1, 2, 2), padding="same", data_format="channels_first"
    )(inputs)
    return with_random_weights(keras.Model(inputs, x))


def with_random_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.normal(scale=0.5, size=variable.shape)
        variable.assign(values.astype(variable.dtype))
    return model


MODELS = {
    "1d": sequence_model,
    "1d-causal-dilated": dilated_causal_sequence_model,
    "2d": image_model,
    "2d-channels-first": channels_first_image_model,
    "3d": volume_model,
    "3d-channels-first-strided": strided_channels_first_volume_model,
}


def random_inputs(model, batch=5, seed=0):
    shape = (batch, *model.input_shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")
