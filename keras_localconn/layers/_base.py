"""What both layer families share: the private base of the two public bases.

`BaseLocallyConnected` and `BaseLocallyConnectedTranspose` stay apart, as
Keras keeps `BaseConv` and `BaseConvTranspose` apart; this module holds what
they have in common: the arguments of every layer with a kernel and a bias,
the input checks, `build` (a per-position kernel and bias, the built shape
in an `InputSpec`, a clear error when the kernel does not fit in memory),
`call` (bias and activation around the engine) and `get_config`. Each family
says, in four small methods, what its geometry, kernel shape and engine are.
"""

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from keras import (
    activations,
    constraints,
    initializers,
    ops,
    quantizers,
    regularizers,
)
from keras.constraints import Constraint
from keras.initializers import Initializer
from keras.layers import InputSpec, Layer
from keras.regularizers import Regularizer

from keras_localconn import _arguments, _keras_private, _shapes
from keras_localconn.layers._lora import LocalLoRA
from keras_localconn.layers._quantization import LocalQuantization


def per_position_initializer(initializer, num_positions):
    """`initializer`, scaled for a kernel with a leading positions axis.

    Variance-scaling initializers (glorot, he, lecun) compute fans from the
    whole (P, K, filters) shape, i.e. P times too large for what each
    position sees. Scale them back so each position starts like a
    convolution kernel would (fan_in = K, fan_out = filters).
    """
    if isinstance(initializer, initializers.VarianceScaling):
        initializer = copy.copy(initializer)
        initializer.scale = initializer.scale * num_positions
    return initializer


# What the backends say when an allocation fails: numpy raises MemoryError;
# TensorFlow "OOM when allocating", torch "can't allocate memory" (CPU) or
# "CUDA out of memory", XLA "RESOURCE_EXHAUSTED" / "Out of memory".
_OUT_OF_MEMORY = ("out of memory", "oom when allocating", "can't allocate memory")


def _is_out_of_memory(error):
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(
        words in text for words in (*_OUT_OF_MEMORY, "resource_exhausted")
    )


def _format_bytes(count):
    """`count` bytes, exactly and in decimal units: '2,592 bytes (2.59 KB)'."""
    scaled = count
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if scaled < 1000 or unit == "TB":
            break
        scaled /= 1000
    return f"{count:,} bytes" + (f" ({scaled:.3g} {unit})" if unit != "bytes" else "")


class LocalBase(LocalQuantization, LocalLoRA, Layer):
    """A layer whose kernel has one ``(K, channels)`` matrix per position.

    Subclasses define `_engine` (the function that computes, called as
    ``_engine(inputs, kernel, *_window(), data_format, bias=, owner=)``),
    `_window` (their window arguments, in the engine's order), `_geometry`
    (the forward `_shapes.Geometry` of an input shape: for a transposed layer
    that of its adjoint, whose output shape is the layer's input),
    `_output_spatial_shape` and `_kernel_shape`, and say what the kernel's
    positions are (`_positions`: "output" or "input") and which Keras layer
    shares its weights (`_conv_suffix`: "" for `Conv*D`, "Transpose" for
    `Conv*DTranspose`).
    """

    _positions = "output"
    _conv_suffix = ""

    def __init__(
        self,
        rank: int,
        filters: int,
        data_format: str | None = None,
        activation: str | Callable | None = None,
        use_bias: bool = True,
        kernel_initializer: str | dict | Initializer = "glorot_uniform",
        bias_initializer: str | dict | Initializer = "zeros",
        kernel_regularizer: str | dict | Regularizer | None = None,
        bias_regularizer: str | dict | Regularizer | None = None,
        activity_regularizer: str | dict | Regularizer | None = None,
        kernel_constraint: str | dict | Constraint | None = None,
        bias_constraint: str | dict | Constraint | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        quantization_config: "quantizers.QuantizationConfig | None" = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        owner = self._owner
        self.rank = rank
        self.filters = _arguments.standardize_positive_int(filters, "filters", owner)
        self.data_format = _arguments.standardize_data_format(data_format, owner)
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        # What `LocalLoRA` and `LocalQuantization` read, set as Dense sets them.
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else lora_rank
        self.lora_enabled = False
        self.quantization_config = quantization_config
        self.inputs_quantizer = None
        self.input_spec = InputSpec(ndim=rank + 2)

    @property
    def _owner(self):
        return f"{type(self).__name__} '{self.name}'"

    def _input_sizes(self, input_shape):
        """`(spatial_shape, channels)` of `input_shape`, which must be known."""
        input_shape = tuple(input_shape)
        if len(input_shape) != self.rank + 2:
            raise ValueError(
                f"{self._owner}: expected inputs of rank {self.rank + 2} "
                f"(batch, {self.rank} spatial dimension(s), channels). "
                f"Received input_shape={input_shape}"
            )
        spatial, channels = _shapes.split_input_shape(input_shape, self.data_format)
        if any(n is None for n in spatial) or channels is None:
            raise ValueError(
                f"{self._owner}: the spatial dimensions and the channel "
                f"dimension must be known when the layer is built (weights "
                f"differ per {self._positions} position). Received input_shape="
                f"{input_shape} with data_format='{self.data_format}'"
            )
        return tuple(spatial), channels

    def output_spatial_shape(self, input_shape):
        """The output spatial shape for `input_shape` (batch included)."""
        return self._output_spatial_shape(self._geometry(input_shape))

    def compute_output_shape(self, input_shape):
        out = self.output_spatial_shape(input_shape)
        batch = tuple(input_shape)[0]
        if self.data_format == "channels_last":
            return (batch, *out, self.filters)
        return (batch, self.filters, *out)

    def build(self, input_shape):
        geo = self._geometry(input_shape)
        spatial, channels = self._input_sizes(input_shape)
        # Weights are per position: the built spatial shape is part of the
        # input's contract, like the channels.
        if self.data_format == "channels_last":
            axes = {**dict(enumerate(spatial, start=1)), -1: channels}
        else:
            axes = {1: channels, **dict(enumerate(spatial, start=2))}
        self.input_spec = InputSpec(ndim=self.rank + 2, axes=axes)
        kernel_shape = self._kernel_shape(geo, channels)
        if self.quantization_mode is None:
            self._kernel = self._float_kernel(kernel_shape, geo)
        else:  # a quantized layer being built to load: no float kernel
            self.quantized_build(
                kernel_shape, self.quantization_mode, self.quantization_config
            )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=self._bias_shape(geo),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                trainable=True,
                dtype=self.dtype,
            )
        else:
            self.bias = None
        self._build_lora()

    def _bias_shape(self, geo):
        return (*self._output_spatial_shape(geo), self.filters)

    def _engine_options(self):
        """Keyword arguments of `_engine` beyond the bias and the owner."""
        return {}

    def _kernel_too_large(self, kernel_shape, geo, error):
        dtype = self.dtype or "float32"
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        size = math.prod(kernel_shape) * itemsize
        return ValueError(
            f"{self._owner}: the kernel, of shape {kernel_shape}, "
            f"{_format_bytes(size)} of {dtype}, could "
            f"not be allocated: the device ran out of memory ({error}). A "
            f"locally connected layer has separate weights for each of its "
            f"{kernel_shape[0]} {self._positions} positions (spatial shape "
            f"{geo.output_shape}), so its weights grow with the input size. "
            f"Use larger `strides` or "
            f"a smaller input (for example after pooling) to have fewer "
            f"positions, shard the kernel over several devices "
            f"(keras_localconn.distribution.positions_layout_map), or use a "
            f"keras.layers.Conv{self.rank}D{self._conv_suffix}, which shares its "
            f"weights across positions."
        )

    def call(self, inputs):
        bias = None
        if self.use_bias:
            bias = ops.reshape(self.bias, (math.prod(self.bias.shape[:-1]), -1))
        outputs = self._engine(
            inputs,
            self._engine_kernel(),
            *self._window(),
            self.data_format,
            bias=bias,
            owner=self._owner,
            **self._engine_options(),
        )
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": regularizers.serialize(
                    self.activity_regularizer
                ),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint),
            }
        )
        return config

    def _float_kernel(self, kernel_shape, geo):
        """The float kernel variable, with a clear error when it does not fit."""
        initializer = per_position_initializer(self.kernel_initializer, kernel_shape[0])
        try:
            kernel = self.add_weight(
                name="kernel",
                shape=kernel_shape,
                initializer=initializer,
                regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
                trainable=True,
                dtype=self.dtype,
            )
        except Exception as error:
            if not _is_out_of_memory(error):
                raise
            raise self._kernel_too_large(kernel_shape, geo, error) from error
        try:
            # JAX dispatches asynchronously, under `keras.distribution` too:
            # an allocation that failed shows only when the value is read.
            ops.convert_to_numpy(kernel.value[(0,) * len(kernel_shape)])
        except Exception as error:
            # Anything else means the value cannot be read here (a kernel
            # created while a graph is traced): it is allocated when it runs.
            if _is_out_of_memory(error):
                _keras_private.untrack_variable(self, kernel)
                raise self._kernel_too_large(kernel_shape, geo, error) from error
        return kernel
