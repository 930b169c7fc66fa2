"""Between shared and unshared weights: `from_conv`, `untie` and `to_conv`.

A convolution is a locally connected layer whose kernels are all equal, so
`from_conv` unties a `keras.layers.Conv1D/2D/3D` into a
`LocallyConnected1D/2D/3D` that computes the same outputs (the DeepFace
recipe: start unshared weights from a trained convolution), with one kernel
per output position or per group of positions (`position_groups`); `untie`
gives a grouped layer one kernel per position, and `to_conv` ties a locally
connected layer back into a convolution whose kernel and bias are the
averages over output positions (exact when they are all equal).

Untying chosen layers of a trained model, keeping its outputs:
`keras.models.clone_model` rebuilds the model, `clone_function` replaces the
chosen convolutions (`from_conv` keeps their names), and the other layers,
which `clone_model` creates afresh, get their trained weights back.

Example:

>>> import numpy as np
>>> import keras
>>> import keras_localconn
>>> keras.utils.set_random_seed(0)
>>> model = keras.Sequential(
...     [
...         keras.Input((12, 12, 3)),
...         keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
...         keras.layers.Conv2D(4, 3, padding="same", name="conv2"),
...         keras.layers.GlobalAveragePooling2D(),
...         keras.layers.Dense(2),
...     ]
... )
>>> def untie(layer):
...     if layer.name == "conv2":
...         return keras_localconn.from_conv(layer)
...     return layer.__class__.from_config(layer.get_config())
>>> untied = keras.models.clone_model(model, clone_function=untie)
>>> for layer in untied.layers:
...     if layer.weights and layer.name != "conv2":
...         layer.set_weights(model.get_layer(layer.name).get_weights())
>>> type(untied.get_layer("conv2")).__name__
'LocallyConnected2D'
>>> x = np.random.default_rng(0).normal(size=(2, 12, 12, 3))
>>> bool(np.allclose(untied.predict(x, verbose=0), model.predict(x, verbose=0),
...                  atol=1e-5))
True
"""

import math

import keras
import numpy as np
from keras import ops

from keras_localconn import _shapes
from keras_localconn.layers import (
    BaseLocallyConnected,
    LocallyConnected1D,
    LocallyConnected2D,
    LocallyConnected3D,
)

__all__ = ["from_conv", "to_conv", "untie"]

_LOCAL_LAYERS = {1: LocallyConnected1D, 2: LocallyConnected2D, 3: LocallyConnected3D}
_CONV_LAYERS = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
# The constructor arguments both kinds of layer take, with the same meaning;
# `padding` is checked on its own.
_SHARED_ARGUMENTS = (
    "name",
    "trainable",
    "dtype",
    "filters",
    "kernel_size",
    "strides",
    "data_format",
    "dilation_rate",
    "activation",
    "use_bias",
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "bias_constraint",
)


def from_conv(conv_layer, input_shape=None, position_groups=None):
    """A `LocallyConnected*D` equal to a convolution, its kernel at every position.

    The new layer has the configuration of `conv_layer` (name, dtype policy,
    filters, kernel_size, strides, padding, dilation_rate, data_format,
    activation, use_bias, initializers, regularizers and constraints) and is
    built for one input shape: every output position (or, with
    `position_groups`, every group of positions) gets a copy of the
    convolution's kernel and of its bias, so its outputs equal the
    convolution's. From there the positions (or groups) can learn apart.

    A regularizer now applies to every position's copy: an L2 penalty on the
    kernel grows with the number of output positions.

    Args:
        conv_layer: a `keras.layers.Conv1D`, `Conv2D` or `Conv3D` (or a
            subclass) with `groups=1`. If it is not built, its kernel and
            bias are created by building it for `input_shape` first.
        input_shape: the input shape to build for, with or without the batch
            axis, spatial sizes known. Defaults to the shape `conv_layer`
            was built with; needed when that is unknown or has unknown
            spatial sizes (a fully convolutional model).
        position_groups: the new layer's `position_groups` (see
            `LocallyConnected2D`): None for a kernel per output position, a
            block shape or a map of the output shape for one per group.

    Returns:
        A built `LocallyConnected1D`, `2D` or `3D`.

    Raises:
        TypeError: `conv_layer` is not a Keras `Conv1D/2D/3D` (transposed,
            depthwise and separable convolutions are not).
        ValueError: `groups > 1` (a grouped convolution has no locally
            connected equivalent here), or no usable `input_shape`.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import keras_localconn
    >>> conv = keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2)
    >>> local = keras_localconn.from_conv(conv, input_shape=(10, 2))
    >>> tuple(local.kernel.shape)  # 10 positions, 3 taps x 2 channels, 4 filters
    (10, 6, 4)
    >>> x = np.random.default_rng(0).normal(size=(1, 10, 2))
    >>> bool(keras.ops.all(keras.ops.isclose(local(x), conv(x), atol=1e-5)))
    True
    """
    rank = _conv_rank(conv_layer)
    owner = f"from_conv: layer '{conv_layer.name}'"
    if conv_layer.groups != 1:
        raise ValueError(
            f"{owner} has groups={conv_layer.groups}: a grouped convolution "
            f"has no locally connected equivalent (every position of a "
            f"LocallyConnected{rank}D sees all input channels). Only groups=1 "
            f"converts."
        )
    input_shape = _input_shape(conv_layer, rank, input_shape, owner)
    if not conv_layer.built:
        conv_layer.build(input_shape)
    config = conv_layer.get_config()
    arguments = {name: config[name] for name in _SHARED_ARGUMENTS if name in config}
    local = _LOCAL_LAYERS[rank](
        padding=conv_layer.padding, position_groups=position_groups, **arguments
    )
    local.build(input_shape)

    # Keras' Conv kernel is (*kernel_size, channels, filters) in both data
    # formats; a patch orders K (offsets..., channel) for channels_last and
    # (channel, offsets...) for channels_first.
    kernel = ops.convert_to_tensor(conv_layer.kernel)  # LoRA included, if any
    if local.data_format == "channels_first":
        kernel = ops.moveaxis(kernel, -2, 0)
    patch_kernel = ops.reshape(kernel, (1, -1, local.filters))
    local.kernel.assign(ops.broadcast_to(patch_kernel, local.kernel.shape))
    if local.use_bias:
        local.bias.assign(ops.broadcast_to(conv_layer.bias, local.bias.shape))
    return local


def to_conv(lc_layer):
    """A built `Conv*D` whose kernel and bias are the averages over positions.

    The inverse of `from_conv`: exact when every output position holds the
    same kernel and bias (a layer made by `from_conv`, or trained with tied
    weights), and otherwise the convolution whose weights are closest to
    the layer's (least squares over positions: with `position_groups`,
    each group's kernel weighs as many times as it has positions). The
    configuration (name, dtype policy, filters, kernel_size, strides,
    padding, dilation_rate, data_format, activation, use_bias, initializers,
    regularizers, constraints) carries over; the convolution is built for
    the input shape of `lc_layer`.

    On TensorFlow and a CPU, a `Conv1D` with `data_format="channels_first"`
    is refused by TensorFlow's kernels, and with oneDNN on it runs and, on
    some CPUs, gives wrong results for some configurations (see "TensorFlow:
    `channels_first` convolutions on a CPU" in docs/backends.md, which has a
    reproduction): convert channels_last layers there, or check the result.

    Args:
        lc_layer: a built `LocallyConnected1D`, `2D` or `3D`.

    Returns:
        A built `keras.layers.Conv1D`, `Conv2D` or `Conv3D`.

    Raises:
        TypeError: `lc_layer` is not a locally connected layer.
        ValueError: it is not built, or it uses what a Keras convolution
            cannot express: `padding="circular"`, explicit padding other
            than zeros everywhere (put a `keras.layers.ZeroPadding*D` in
            front of a `padding="valid"` convolution instead), or strides > 1
            together with dilation > 1 on different axes.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import keras_localconn
    >>> local = keras_localconn.LocallyConnected2D(4, 3, padding="same")
    >>> local.build((None, 6, 6, 2))
    >>> tied = np.random.default_rng(0).normal(size=(1, 3 * 3 * 2, 4))
    >>> local.set_weights([np.repeat(tied, 36, axis=0), np.zeros((6, 6, 4))])
    >>> conv = keras_localconn.to_conv(local)
    >>> type(conv).__name__, tuple(conv.kernel.shape), conv.padding
    ('Conv2D', (3, 3, 2, 4), 'same')
    >>> x = np.random.default_rng(0).normal(size=(1, 6, 6, 2))
    >>> bool(keras.ops.all(keras.ops.isclose(conv(x), local(x), atol=1e-5)))
    True
    """
    if not isinstance(lc_layer, BaseLocallyConnected):
        raise TypeError(
            f"to_conv: expected a LocallyConnected1D, 2D or 3D layer. Received "
            f"{type(lc_layer).__name__} '{getattr(lc_layer, 'name', lc_layer)}'"
        )
    rank = lc_layer.rank
    owner = f"to_conv: layer '{lc_layer.name}'"
    if not lc_layer.built:
        raise ValueError(
            f"{owner} is not built: it has no weights to average yet. Build it "
            f"(or call it on an input) first."
        )
    _refuse_quantized(lc_layer, owner)
    padding = _conv_padding(lc_layer, owner)
    if max(lc_layer.strides) > 1 and max(lc_layer.dilation_rate) > 1:
        raise ValueError(
            f"{owner} has strides={lc_layer.strides} and dilation_rate="
            f"{lc_layer.dilation_rate}: Keras' Conv{rank}D refuses strides > 1 "
            f"with dilation > 1 even on different axes."
        )
    config = lc_layer.get_config()
    arguments = {name: config[name] for name in _SHARED_ARGUMENTS if name in config}
    conv = _CONV_LAYERS[rank](padding=padding, **arguments)
    input_shape = (lc_layer.get_build_config() or {}).get("input_shape")
    if input_shape is None:  # built outside Keras' build wrapper
        channels = lc_layer.kernel.shape[1] // math.prod(lc_layer.kernel_size)
        spatial = (None,) * rank
        input_shape = (
            (None, *spatial, channels)
            if lc_layer.data_format == "channels_last"
            else (None, channels, *spatial)
        )
    conv.build(input_shape)

    # (P or T, K, filters) -> the mean over positions (K, filters) ->
    # (*kernel_size, channels, filters), undoing the channels_first patch
    # order (channel, offsets...).
    weights = _position_weights(lc_layer)
    kernel = ops.tensordot(weights, ops.convert_to_tensor(lc_layer.kernel), axes=1)
    channels = kernel.shape[0] // math.prod(lc_layer.kernel_size)
    if lc_layer.data_format == "channels_first":
        kernel = ops.reshape(kernel, (channels, *lc_layer.kernel_size, -1))
        kernel = ops.moveaxis(kernel, 0, -2)
    conv.kernel.assign(ops.reshape(kernel, conv.kernel.shape))
    if lc_layer.use_bias:
        bias = ops.reshape(lc_layer.bias, (-1, lc_layer.filters))
        conv.bias.assign(ops.tensordot(weights, bias, axes=1))
    return conv


def _refuse_quantized(lc_layer, owner):
    """A quantized kernel holds int8 (or packed int4) values: convert the
    float layer, then quantize."""
    if lc_layer.quantization_mode is not None:
        raise ValueError(
            f"{owner} is quantized (quantization_mode="
            f"{lc_layer.quantization_mode!r}): its kernel holds integer values, "
            f"not weights to copy or average. Convert the float layer, then "
            f"quantize the result."
        )


def _position_weights(lc_layer):
    """``(P or T,)`` float32: the share of the output positions each kernel
    of `lc_layer` serves (``1 / P`` each, without groups)."""
    groups = lc_layer.output_position_groups
    count = lc_layer.kernel.shape[0]
    if groups is None:
        return np.full((count,), 1 / count, dtype="float32")
    sizes = np.bincount(groups, minlength=count)
    return (sizes / sizes.sum()).astype("float32")


def untie(lc_layer):
    """The `LocallyConnected*D` with one kernel per output position that
    computes what `lc_layer`, built with `position_groups`, computes.

    Every output position gets a copy of its group's kernel and bias; the
    configuration, name included, is `lc_layer`'s with
    ``position_groups=None``, built for the same input shape. From there the
    positions can learn apart (start a locally connected layer from a
    trained grouped one, as `from_conv` starts one from a convolution). A
    layer without groups gives an equal copy. A layer with LoRA enabled
    gives a plain one (no LoRA) whose kernel is the merged kernel, so that
    its outputs are the same.

    Args:
        lc_layer: a built `LocallyConnected1D`, `2D` or `3D`.

    Returns:
        A built layer of the same class.

    Raises:
        TypeError: `lc_layer` is not a locally connected layer.
        ValueError: it is not built.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import keras_localconn
    >>> blocks = keras_localconn.LocallyConnected2D(4, 3, position_groups=(2, 3))
    >>> x = np.random.default_rng(0).normal(size=(1, 8, 8, 2))
    >>> y = blocks(x)  # 6x6 outputs in 3x2 blocks of 2x3 positions
    >>> tuple(blocks.kernel.shape), tuple(blocks.bias.shape)
    ((6, 18, 4), (6, 4))
    >>> untied = keras_localconn.untie(blocks)
    >>> tuple(untied.kernel.shape), tuple(untied.bias.shape)
    ((36, 18, 4), (6, 6, 4))
    >>> bool(keras.ops.all(keras.ops.isclose(untied(x), y, atol=1e-5)))
    True
    """
    if not isinstance(lc_layer, BaseLocallyConnected):
        raise TypeError(
            f"untie: expected a LocallyConnected1D, 2D or 3D layer. Received "
            f"{type(lc_layer).__name__} '{getattr(lc_layer, 'name', lc_layer)}'"
        )
    owner = f"untie: layer '{lc_layer.name}'"
    input_shape = (lc_layer.get_build_config() or {}).get("input_shape")
    if not lc_layer.built or input_shape is None:
        raise ValueError(
            f"{owner} is not built: the output positions, and so the kernels "
            f"to copy, follow from the input shape. Build it (or call it on an "
            f"input) first."
        )
    _refuse_quantized(lc_layer, owner)
    # A plain layer: with LoRA enabled, `lc_layer.kernel` is the merged one.
    config = {**lc_layer.get_config(), "position_groups": None}
    config.pop("lora_rank", None)
    config.pop("lora_alpha", None)
    untied = type(lc_layer).from_config(config)
    untied.build(input_shape)
    groups = lc_layer.output_position_groups
    kernel = ops.convert_to_tensor(lc_layer.kernel)
    bias = lc_layer.bias
    if groups is not None:
        groups = ops.convert_to_tensor(groups.astype("int32"))
        kernel = ops.take(kernel, groups, axis=0)
        if bias is not None:
            bias = ops.take(bias, groups, axis=0)
    untied.kernel.assign(kernel)
    if bias is not None:
        untied.bias.assign(ops.reshape(bias, untied.bias.shape))
    return untied


def _conv_rank(conv_layer):
    for rank, conv_class in _CONV_LAYERS.items():
        if isinstance(conv_layer, conv_class):
            return rank
    raise TypeError(
        f"from_conv: expected a keras.layers.Conv1D, Conv2D or Conv3D "
        f"(transposed, depthwise and separable convolutions have no locally "
        f"connected equivalent here). Received {type(conv_layer).__name__} "
        f"'{getattr(conv_layer, 'name', conv_layer)}'"
    )


def _input_shape(conv_layer, rank, input_shape, owner):
    """The full input shape (batch first) to build for, spatial sizes known."""
    if input_shape is None and conv_layer.built:
        input_shape = (conv_layer.get_build_config() or {}).get("input_shape")
    if input_shape is None:
        raise ValueError(
            f"{owner} is not built and no `input_shape` was given: a locally "
            f"connected layer has weights per output position, so it needs "
            f"the input's spatial sizes. Pass input_shape=(...)."
        )
    input_shape = tuple(input_shape)
    if len(input_shape) == rank + 1:
        input_shape = (None, *input_shape)
    data_format = conv_layer.data_format
    spatial, channels = (
        _shapes.split_input_shape(input_shape, data_format)
        if len(input_shape) == rank + 2
        else ((None,), None)
    )
    if any(n is None for n in spatial) or channels is None:
        raise ValueError(
            f"{owner}: `input_shape` must give {rank} known spatial size(s) and "
            f"the channels, with or without the batch axis (data_format="
            f"'{data_format}'): a locally connected layer has weights per "
            f"output position. Received input_shape={input_shape}; pass "
            f"input_shape=(...) with the sizes of the inputs it will see."
        )
    if conv_layer.built and channels != conv_layer.kernel.shape[-2]:
        raise ValueError(
            f"{owner} was built for {conv_layer.kernel.shape[-2]} input "
            f"channels. Received input_shape={input_shape} with {channels} "
            f"channels (data_format='{data_format}')"
        )
    return input_shape


def _conv_padding(lc_layer, owner):
    """The padding a Keras Conv takes for `lc_layer`'s, or a `ValueError`."""
    padding = lc_layer.padding
    if isinstance(padding, str) and padding != "circular":
        return padding  # valid, same, causal (1D)
    if not isinstance(padding, str) and not any(any(pair) for pair in padding):
        return "valid"  # explicit, all zeros
    raise ValueError(
        f"{owner} has padding={padding!r}, which Keras' Conv{lc_layer.rank}D "
        f"cannot express (it pads 'valid', 'same' or, in 1D, 'causal'). "
        + (
            "Circular padding has no Conv equivalent."
            if padding == "circular"
            else f"Put keras.layers.ZeroPadding{lc_layer.rank}D({padding}) in "
            f"front of a padding='valid' convolution instead."
        )
    )
