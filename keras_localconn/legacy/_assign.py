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
from keras_localconn.legacy._config import padding_layer_name
from keras_localconn.legacy._convert import convert_weights


def match_weights(model, stored, convert_locally_connected):
    """(variable, value) pairs for every weight of `model`, all checked.

    `convert_locally_connected(layer, arrays)` turns the stored arrays of a
    locally connected layer into the values of its variables; its errors
    name the layer.
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
    for layer, name in zip(targets, names):
        values = stored[name].arrays
        if not isinstance(layer, BaseLocallyConnected) and any(
            isinstance(inner, BaseLocallyConnected)
            for inner in _keras_private.sublayers(layer)
        ):
            raise ValueError(
                f"layer '{layer.name}' of model '{model.name}' contains a "
                f"locally connected layer. Only locally connected layers at "
                f"the top level of the model can be loaded: nested models and "
                f"wrappers holding them are not supported."
            )
        if isinstance(layer, BaseLocallyConnected):
            values = convert_locally_connected(layer, values)
        variables = layer.trainable_weights + layer.non_trainable_weights
        if len(values) != len(variables):
            raise ValueError(
                f"layer '{name}' in the file has {len(values)} weight(s), layer "
                f"'{layer.name}' of the model expects {len(variables)}: the "
                f"file was saved from a different architecture."
            )
        for variable, value in zip(variables, values):
            if tuple(variable.shape) != tuple(value.shape):
                raise ValueError(
                    f"weight '{variable.path}' of layer '{layer.name}' has shape "
                    f"{tuple(variable.shape)}, the file's layer '{name}' stores "
                    f"shape {tuple(value.shape)}: the file was saved from a "
                    f"different architecture."
                )
            assignments.append((variable, value))
    return assignments


def assign(assignments):
    for variable, value in assignments:
        variable.assign(value)


def converter_for_model(model):
    """How `load_weights` converts the stored arrays of `model`'s layers.

    The Keras 2 config of each locally connected layer is read from the layer
    itself; the Keras 2 `implementation` is recognised from the stored
    kernel's rank. A layer preceded by the zero padding layer `load_model`
    inserts (`<name>_keras2_padding`) was a Keras 2 `same`-padded layer over
    that padding layer's input.
    """

    def convert(layer, arrays):
        keras2_config = layer.get_config()
        keras2_config["implementation"] = _infer_implementation(layer, arrays)
        input_shape = tuple(layer.input.shape)
        padding_layer = _keras2_padding_layer(model, layer)
        if padding_layer is not None:
            keras2_config["padding"] = "same"
            input_shape = tuple(padding_layer.input.shape)
        converted = convert_weights(arrays, keras2_config, input_shape)
        if padding_layer is not None:
            expected = _padding_pairs(padding_layer)
            if converted.zero_padding != expected:
                raise ValueError(
                    f"layer '{layer.name}' follows '{padding_layer.name}', "
                    f"which pads {expected}, "
                    f"but Keras 2's padding='same' padded "
                    f"{converted.zero_padding or 'as Keras 3 does'} for these "
                    f"shapes: the model does not match the file."
                )
        elif converted.zero_padding:
            pads = converted.zero_padding
            shown = pads[0] if layer.rank == 1 else pads
            raise ValueError(
                f"layer '{layer.name}' uses padding='same', which Keras 2 split as "
                f"{pads} (kernel_size // 2 before) and Keras 3 splits "
                f"differently. Build it as ZeroPadding{layer.rank}D({shown}, "
                f"name='{padding_layer_name(layer.name)}') followed by the "
                f"layer with padding='valid' (what `load_model` builds), or "
                f"load the full Keras 2 model with `load_model`."
            )
        return converted.weights

    return convert


def _infer_implementation(layer, arrays):
    # impl 1: (P, K, filters); impl 2: one axis per input and output dim;
    # impl 3: a flat vector.
    ndim = np.ndim(arrays[0])
    return {3: 1, 2 * layer.rank + 2: 2, 1: 3}.get(ndim, 1)


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
