"""Pairing stored Keras 2 weights with a Keras 3 model's variables.

Layers that have weights are matched in order, as Keras matches `.h5` weights.
Everything is checked before anything is assigned, so that a failure leaves
the model untouched. Errors are `ValueError`s naming the layers; the entry
points in `keras_localconn.legacy` prefix them with the file path.
"""

import keras
import numpy as np

from keras_localconn import _keras_private
from keras_localconn.layers import BaseLocallyConnected
from keras_localconn.legacy import _layer


def match_weights(model, stored, convert_locally_connected, progress=None):
    """(variable, value) pairs for every weight of `model`, all checked.

    Top-level layers that have weights are matched in order, as Keras 2's
    `.h5` format stores them; a container (nested model, wrapper, a user's
    layer class) stores its whole subtree's weights, trainable first, in
    `layer.trainable_weights + layer.non_trainable_weights` order. The arrays
    of each locally connected layer found at any depth go through
    `convert_locally_connected(layer, arrays)`, which returns the values of
    its variables; its errors name the layer. `progress`, if given, is
    called with a line for each layer.
    """
    targets = [layer for layer in model.layers if layer.weights]
    names = list(stored)
    if len(names) != len(targets):
        raise ValueError(
            f"the file holds weights for {len(names)} layer(s) "
            f"({', '.join(names)}), but model '{model.name}' has "
            f"{len(targets)} layer(s) with weights "
            f"({', '.join(layer.name for layer in targets)}): the file was "
            f"saved from a different architecture."
        )
    assignments = []
    for count, (layer, name) in enumerate(zip(targets, names), start=1):
        if progress is not None:
            progress(f"layer {count}/{len(targets)}: {layer.name}")
        variables = layer.trainable_weights + layer.non_trainable_weights
        values = list(stored[name].arrays)
        if len(values) != len(variables):
            raise ValueError(
                f"layer '{name}' in the file has {len(values)} weight(s), layer "
                f"'{layer.name}' of the model expects {len(variables)}: the "
                f"file was saved from a different architecture."
            )
        position = {id(variable): index for index, variable in enumerate(variables)}
        for inner in [layer, *_keras_private.sublayers(layer)]:
            if not isinstance(inner, BaseLocallyConnected) or not inner.weights:
                continue
            indices = [position[id(variable)] for variable in _own_weights(inner)]
            converted = convert_locally_connected(
                inner, [values[index] for index in indices]
            )
            for index, value in zip(indices, converted):
                values[index] = value
        for variable, value in zip(variables, values):
            if tuple(variable.shape) != tuple(np.shape(value)):
                raise ValueError(
                    f"weight '{variable.path}' of layer '{layer.name}' has shape "
                    f"{tuple(variable.shape)}, the file's layer '{name}' stores "
                    f"shape {tuple(np.shape(value))}: the file was saved from a "
                    f"different architecture."
                )
            assignments.append((variable, value))
    return assignments


def _own_weights(layer):
    """`layer`'s variables in the order Keras 2 stored a layer's weights."""
    return layer.trainable_weights + layer.non_trainable_weights


def assign(assignments):
    for variable, value in assignments:
        variable.assign(value)


def converter_for_model(model, record):
    """How the loaders convert the stored arrays of `model`'s layers.

    Each locally connected layer is converted for its own configuration
    (`_layer.convert`); the Keras 2 `implementation` is recognised from the
    stored kernel. A `same`-padded layer that Keras 2 padded otherwise than
    Keras 3 gets Keras 2's padding, explicitly, through `record` (a
    `_layer.Keras2Import`, which can undo it). A layer behind the zero
    padding layer earlier versions of `load_model` inserted
    (`<name>_keras2_padding`, a `valid` layer) was a Keras 2 `same`-padded
    layer over that padding layer's input.
    """

    def convert(layer, arrays):
        padding_layer = _keras2_padding_layer(model, layer)
        if padding_layer is None:
            converted = _layer.convert(layer, arrays)
            record.adopt(layer, converted)
            return converted.values
        input_shape = tuple(padding_layer.input.shape)
        converted = _layer.convert(layer, arrays, input_shape, padding="same")
        expected = _padding_pairs(padding_layer)
        if converted.padding != expected:
            raise ValueError(
                f"layer '{layer.name}' follows '{padding_layer.name}', "
                f"which pads {expected}, but Keras 2's padding='same' padded "
                f"{converted.padding or 'as Keras 3 does'} for these shapes: "
                f"the model does not match the file."
            )
        record.adopt(layer, converted._replace(padding=None))
        return converted.values

    return convert


def padding_layer_name(layer_name):
    """The zero padding layer earlier versions of `load_model` put before a layer."""
    return f"{layer_name}_keras2_padding"


def _keras2_padding_layer(model, layer):
    padding_class = {1: keras.layers.ZeroPadding1D, 2: keras.layers.ZeroPadding2D}
    try:
        padding_layer = model.get_layer(padding_layer_name(layer.name))
    except ValueError:
        return None
    if not isinstance(padding_layer, padding_class.get(layer.rank, ())):
        return None
    return padding_layer


def _padding_pairs(padding_layer):
    padding = padding_layer.padding
    if isinstance(padding_layer, keras.layers.ZeroPadding1D):
        padding = (padding,)
    return tuple(tuple(int(n) for n in pair) for pair in padding)
