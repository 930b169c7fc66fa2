"""Keras 2 model configs (any format, any depth): checked and rebuilt in Keras 3.

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


def layer_entries(model_config):
    """Every layer entry (`{"class_name": ..., "config": ...}`) of a model
    config, at any depth: nested models' layers and wrapped layers included."""
    inner = model_config.get("config") if isinstance(model_config, dict) else None
    if not isinstance(inner, dict):
        return
    layers = inner.get("layers")
    nested = list(layers) if isinstance(layers, list) else []
    nested += [
        inner[key]
        for key in ("layer", "forward_layer", "backward_layer")
        if isinstance(inner.get(key), dict)
    ]
    for entry in nested:
        if isinstance(entry, dict) and "class_name" in entry:
            yield entry
            yield from layer_entries(entry)


def _short(class_name):
    """`Name` of a class registered as `package>Name` (Keras 2 wrote both)."""
    return class_name.rsplit(">", 1)[-1]


def _known(class_name, registered_name, objects):
    return (
        class_name in objects
        or _short(class_name) in objects
        or class_name in _MODEL_CLASSES
        or hasattr(keras.layers, class_name)
        or any(
            keras.saving.get_registered_object(name) is not None
            for name in (registered_name, class_name)
            if name
        )
    )


def check_model_config(model_config, custom_objects):
    """Refuse up front what cannot be rebuilt, naming the layer."""
    objects = {**(custom_objects or {}), **KERAS2_LAYERS}
    class_name = (
        model_config.get("class_name") if isinstance(model_config, dict) else None
    )
    if class_name not in _MODEL_CLASSES and class_name not in objects:
        raise ValueError(
            f"the model config describes a {class_name!r}, not a Sequential or "
            f"functional model. A subclassed model loads only with its Keras 3 "
            f"port passed in `custom_objects`."
        )
    for entry in layer_entries(model_config):
        class_name = entry["class_name"]
        if not _known(class_name, entry.get("registered_name"), objects):
            name = entry.get("config", {}).get("name", entry.get("name"))
            short = _short(class_name)
            raise ValueError(
                f"layer '{name}' is a {class_name}, which neither Keras 3 nor "
                f"keras_localconn provides (a layer class of your own?). Port it "
                f"to Keras 3 and pass it as custom_objects={{'{short}': "
                f"{short}}}."
            )


def _for_keras3(model_config, objects):
    """A copy of `model_config` that Keras 3's config reader rebuilds.

    Two differences between Keras 2 and Keras 3 configs are bridged:

    - tf-keras (2.13+) `.keras` configs name built-in layers with
      `"module": "keras.layers"` and `"registered_name": null`; Keras 3
      would look a locally connected layer up in `keras.layers` and fail.
      The class's own name, registered in the scope, resolves it; a user
      class registered as `package>Name` in Keras 2 resolves to the
      `custom_objects` entry `Name` where nothing is registered under the
      full name.
    - a Keras 2 `Sequential` built on an `Input` had a node of its own (node
      0), so a functional model that calls it refers to its node 1; a Keras
      3 `Sequential` has no such node, and the references are shifted down.
    """
    config = copy.deepcopy(model_config)
    for entry in [config, *layer_entries(config)]:
        class_name = entry["class_name"]
        registered = any(
            keras.saving.get_registered_object(name) is not None
            for name in (entry.get("registered_name"), class_name)
            if name
        )
        if _short(class_name) in objects and not registered:
            entry["class_name"] = _short(class_name)
        if entry["class_name"] in objects and not registered:
            entry["registered_name"] = entry["class_name"]
        _renumber_sequential_nodes(entry.get("config"))
    return config


def _renumber_sequential_nodes(config):
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        return
    shifted = {
        entry.get("name", entry.get("config", {}).get("name"))
        for entry in config["layers"]
        if isinstance(entry, dict)
        and entry.get("class_name") == "Sequential"
        and entry.get("config", {}).get("layers", [{}])[0].get("class_name")
        == "InputLayer"
    }
    if not shifted:
        return

    def shift(reference):
        if (
            isinstance(reference, list)
            and reference
            and isinstance(reference[0], str)
            and reference[0] in shifted
        ):
            return [reference[0], reference[1] - 1, *reference[2:]]
        if isinstance(reference, list):
            return [shift(item) for item in reference]
        return reference

    for entry in config["layers"]:
        if isinstance(entry.get("inbound_nodes"), list):
            entry["inbound_nodes"] = shift(entry["inbound_nodes"])
    for key in ("input_layers", "output_layers"):
        if isinstance(config.get(key), list):
            config[key] = shift(config[key])


def model_from_config(model_config, custom_objects, safe_mode):
    """The Keras 3 model a Keras 2 model config describes (config unchanged)."""
    objects = {**(custom_objects or {}), **KERAS2_LAYERS}
    config = _for_keras3(model_config, objects)  # outside the scope: it reads it
    try:
        with keras.saving.custom_object_scope(objects):
            return _keras_private.model_from_keras2_config(config, objects, safe_mode)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"Keras 3 could not rebuild the model from its config: {error}"
        ) from error


# Keras 2 optimizer arguments Keras 3's optimizers refuse.
_KERAS2_ONLY_OPTIMIZER_ARGUMENTS = ("is_legacy_optimizer", "jit_compile")


def _names_only(value):
    """Whether `value` (a loss or metrics entry) is made of names alone."""
    if isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return all(_names_only(item) for item in value)
    if isinstance(value, dict):
        return all(_names_only(item) for item in value.values())
    return False


def compile_arguments(training_config, custom_objects):
    """`model.compile` keyword arguments from a Keras 2 training config.

    Names (`"mse"`, `["accuracy"]`) go to `compile` as they are, which knows
    them all; Keras 3's reader of Keras 2 configs does not know some.
    """
    config = copy.deepcopy(training_config)
    optimizer = config.get("optimizer_config") or {}
    for argument in _KERAS2_ONLY_OPTIMIZER_ARGUMENTS:
        (optimizer.get("config") or {}).pop(argument, None)
    names = {
        key: config.pop(key)
        for key in ("loss", "metrics", "weighted_metrics")
        if config.get(key) is not None and _names_only(config[key])
    }
    config.setdefault("loss_weights", None)
    try:
        arguments = _keras_private.compile_arguments_from_keras2_training_config(
            config, {**(custom_objects or {}), **KERAS2_LAYERS}
        )
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"could not rebuild the training configuration (optimizer, loss, "
            f"metrics): {error}. Load with compile=False and compile the model "
            f"yourself."
        ) from error
    return {**arguments, **names}
