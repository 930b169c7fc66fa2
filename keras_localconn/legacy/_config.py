"""Keras 2 model configs: checked, rewritten and rebuilt as Keras 3 models.

Errors are `ValueError`s that name the layer; the entry points in
`keras_localconn.legacy` prefix them with the file path.
"""

import copy

import keras

from keras_localconn import _keras_private
from keras_localconn.layers import LocallyConnected1D, LocallyConnected2D

# The Keras 2 class names this package maps, and the layers they become.
KERAS2_LAYERS = {
    "LocallyConnected1D": LocallyConnected1D,
    "LocallyConnected2D": LocallyConnected2D,
}
_MODEL_CLASSES = ("Sequential", "Functional", "Model")
_ZERO_PADDING_LAYERS = {1: "ZeroPadding1D", 2: "ZeroPadding2D"}


def padding_layer_name(layer_name):
    """The name of the zero padding layer put in front of `layer_name`."""
    return f"{layer_name}_keras2_padding"


def check_model_config(model_config, custom_objects):
    """Refuse up front what cannot be mapped, naming the layer."""
    if not isinstance(model_config, dict) or model_config.get("class_name") not in (
        _MODEL_CLASSES
    ):
        found = (
            model_config.get("class_name") if isinstance(model_config, dict) else None
        )
        raise ValueError(
            f"the model config describes a {found!r}, not a Sequential or "
            f"functional model (subclassed models have no config that can be "
            f"rebuilt)."
        )
    known = {**(custom_objects or {}), **KERAS2_LAYERS}
    for entry in model_config["config"]["layers"]:
        class_name = entry["class_name"]
        name = entry["config"].get("name", entry.get("name"))
        if (
            class_name not in known
            and not hasattr(keras.layers, class_name)
            and class_name not in _MODEL_CLASSES
            and keras.saving.get_registered_object(class_name) is None
        ):
            raise ValueError(
                f"layer '{name}' is a {class_name}, which neither Keras 3 nor "
                f"keras_localconn provides. Pass its class in `custom_objects`."
            )
        if class_name in KERAS2_LAYERS:
            continue
        nested = _nested_class_names(entry["config"]) & KERAS2_LAYERS.keys()
        if nested:
            raise ValueError(
                f"layer '{name}' ({class_name}) contains a "
                f"{' and a '.join(sorted(nested))}. Only locally connected "
                f"layers at the top level of a Sequential or functional model "
                f"can be imported: nested models and wrappers (TimeDistributed, "
                f"...) holding them are not supported."
            )


def _nested_class_names(config):
    """The `class_name` of every object serialised anywhere inside `config`."""
    if isinstance(config, dict):
        found = (
            {config["class_name"]}
            if isinstance(config.get("class_name"), str)
            else set()
        )
        for value in config.values():
            found |= _nested_class_names(value)
        return found
    if isinstance(config, list):
        return set().union(*(_nested_class_names(value) for value in config))
    return set()


def model_from_config(model_config, custom_objects, safe_mode):
    """The Keras 3 model a Keras 2 model config describes (config unchanged)."""
    objects = {**(custom_objects or {}), **KERAS2_LAYERS}
    try:
        return _keras_private.model_from_keras2_config(
            copy.deepcopy(model_config), objects, safe_mode
        )
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"Keras 3 could not rebuild the model from its config: {error}"
        ) from error


def insert_zero_padding(model_config, paddings):
    """A copy of `model_config` with explicit zero padding before some layers.

    `paddings` maps layer names to per-axis `(before, after)` pairs; each of
    those layers gets `padding="valid"` and a `ZeroPadding1D`/`2D` in front.
    """
    config = copy.deepcopy(model_config)
    layers = []
    for entry in config["config"]["layers"]:
        name = entry["config"]["name"]
        if name in paddings:
            rank = len(paddings[name])
            pad_name = padding_layer_name(name)
            padding = paddings[name][0] if rank == 1 else paddings[name]
            pad_entry = {
                "class_name": _ZERO_PADDING_LAYERS[rank],
                "config": {
                    "name": pad_name,
                    "padding": padding,
                    "data_format": entry["config"]["data_format"],
                    "dtype": entry["config"].get("dtype", "float32"),
                },
            }
            input_shape = entry["config"].pop("batch_input_shape", None)
            if input_shape is not None:
                pad_entry["config"]["batch_input_shape"] = input_shape
            if "inbound_nodes" in entry:  # functional: rewire through the padding
                pad_entry["name"] = pad_name
                pad_entry["inbound_nodes"] = entry["inbound_nodes"]
                entry["inbound_nodes"] = [
                    [[pad_name, index, 0, {}]]
                    for index in range(len(entry["inbound_nodes"]))
                ]
            entry["config"]["padding"] = "valid"
            layers.append(pad_entry)
        layers.append(entry)
    config["config"]["layers"] = layers
    return config


def compile_arguments(training_config, custom_objects):
    """`model.compile` keyword arguments from a Keras 2 training config."""
    try:
        return _keras_private.compile_arguments_from_keras2_training_config(
            training_config, {**(custom_objects or {}), **KERAS2_LAYERS}
        )
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"could not rebuild the training configuration (optimizer, loss, "
            f"metrics): {error}. Load with compile=False and compile the model "
            f"yourself."
        ) from error
