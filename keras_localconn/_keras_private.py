"""Every use of Keras' private modules (``keras.src``), in one place.

Keras exports no public API for these needs. A Keras release that moves one of
them breaks this module only, and the ``tests-oldest`` and latest-Keras test
sessions catch it.
"""

import contextlib


def model_from_keras2_config(model_config, custom_objects, safe_mode):
    """A Keras 3 model rebuilt from a Keras 2 (``.h5``) model config.

    The reader `keras.models.load_model` uses for ``.h5`` files: it knows the
    Keras 2 config forms (``batch_input_shape``, Keras 2 initializer and
    regularizer dicts, list-form ``inbound_nodes``) that the public
    `keras.models.model_from_json` does not. `model_config` is edited in place.
    """
    from keras.src.legacy.saving import saving_options, saving_utils
    from keras.src.saving import serialization_lib

    with saving_options.keras_option_scope(use_legacy_config=True):
        with serialization_lib.SafeModeScope(safe_mode):
            return saving_utils.model_from_config(
                model_config, custom_objects=custom_objects
            )


def compile_arguments_from_keras2_training_config(training_config, custom_objects):
    """`model.compile` keyword arguments from a Keras 2 ``training_config``.

    Keras 2 optimizer, loss and metric configs, read as `keras.models.load_model`
    reads them from ``.h5`` files.
    """
    from keras.src.legacy.saving import saving_utils

    return saving_utils.compile_args_from_training_config(
        training_config, custom_objects
    )


def sublayers(layer):
    """Every layer inside `layer` (nested models, wrappers), `layer` excluded.

    Keras tracks these for any container (``Sequential``, functional models,
    ``TimeDistributed``, ``Bidirectional``, custom layers holding layers); only
    the private ``_flatten_layers`` walks them all.
    """
    return list(layer._flatten_layers(include_self=False))


def untrack_variable(layer, variable):
    """Make `layer` forget `variable`, which its `add_weight` created.

    Keras has no public way to drop a weight (its quantization code uses the
    same private `_untrack_variable`); the layers use it so that a kernel
    whose allocation failed leaves nothing behind.
    """
    layer._untrack_variable(variable)


def not_implemented_error(layer, method):
    """The `NotImplementedError` Keras raises for a `method` that `layer`
    does not implement: the error `Model.quantize` turns into a warning, so
    that the rest of a model is still quantized (Keras' `Dense.quantize`
    raises the same one from its private `_not_implemented_error`)."""
    return layer._not_implemented_error(method)


def mark_quantized(layer):
    """Tell Keras that `layer` holds quantized variables, as Dense's
    `quantized_build` does: Keras' `quantize` wrapper then refuses to
    quantize it twice, and setting a quantized `dtype_policy` does not
    quantize it again (both read the private ``_is_quantized``)."""
    layer._is_quantized = True


def computes_on_accelerator():
    """Whether Keras places new tensors on a GPU, TPU or other non-CPU device.

    `keras.distribution.list_devices` answers for JAX and TensorFlow (it lists
    accelerators first when there are any); Keras has no public equivalent
    for torch, whose backend keeps its device in ``keras.src``.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        from keras.src.backend.torch.core import get_device

        return not str(get_device()).startswith("cpu")
    if backend in ("jax", "tensorflow"):
        return not keras.distribution.list_devices()[0].startswith("cpu")
    return False


@contextlib.contextmanager
def unlocked_tracker(layer):
    """`layer`'s variable tracker unlocked, so that a built layer can add
    weights (Keras' `enable_lora` unlocks the private ``_tracker`` too)."""
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()
