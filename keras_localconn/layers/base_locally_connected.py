"""Rank-generic base class of the locally connected layers."""

import copy
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from keras import activations, constraints, initializers, ops, regularizers
from keras.constraints import Constraint
from keras.initializers import Initializer
from keras.layers import InputSpec, Layer
from keras.regularizers import Regularizer

from keras_localconn import _arguments, _shapes
from keras_localconn import ops as lc_ops

_IMPLEMENTATIONS = (1, 2, 3)

#: Environment variable: the largest kernel, in bytes, a layer may create.
MAX_KERNEL_BYTES_VARIABLE = "KERAS_LOCALCONN_MAX_KERNEL_BYTES"


def _physical_memory_bytes():
    """The machine's physical memory (host RAM), or None where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return None


def max_kernel_bytes() -> int | None:
    """The largest kernel a layer creates, in bytes; None for no limit.

    `$KERAS_LOCALCONN_MAX_KERNEL_BYTES` (an integer; 0 for no limit) if set,
    else half the machine's physical memory: training holds the kernel, its
    gradient and the optimizer's slots, several times the kernel.
    """
    value = os.environ.get(MAX_KERNEL_BYTES_VARIABLE)
    if value is not None:
        try:
            limit = int(value)
        except ValueError:
            raise ValueError(
                f"${MAX_KERNEL_BYTES_VARIABLE} must be an integer number of "
                f"bytes (0 for no limit). Received: {value!r}"
            ) from None
        return limit if limit > 0 else None
    memory = _physical_memory_bytes()
    return memory // 2 if memory else None


def _format_bytes(count):
    """`count` bytes, exactly and in decimal units: '2,592 bytes (2.59 KB)'."""
    scaled = count
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if scaled < 1000 or unit == "TB":
            break
        scaled /= 1000
    return f"{count:,} bytes" + (f" ({scaled:.3g} {unit})" if unit != "bytes" else "")


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


class BaseLocallyConnected(Layer):
    """N-D locally connected layer: a convolution with unshared weights.

    Every output position has its own `(K, filters)` kernel. Public layers
    (`LocallyConnected1D`, `2D`, `3D`) are thin subclasses that fix `rank`.

    The positional order of the arguments is Keras 2's (`activation` follows
    `data_format`); `dilation_rate`, new here, is best passed by keyword.

    Args: see `LocallyConnected2D`.
    """

    def __init__(
        self,
        rank: int,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
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
        implementation: int = 1,
        dilation_rate: int | Sequence[int] = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        owner = self._owner
        self.rank = rank
        self.filters = _arguments.normalize_positive_int(filters, "filters", owner)
        (
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation_rate,
        ) = _arguments.normalize_geometry(
            rank, kernel_size, strides, padding, dilation_rate, owner
        )
        self.data_format = _arguments.normalize_data_format(data_format, owner)
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"{owner}: `implementation` must be one of {_IMPLEMENTATIONS}. "
                f"Received: implementation={implementation!r}"
            )
        self.implementation = implementation
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.input_spec = InputSpec(ndim=rank + 2)

    @property
    def _owner(self):
        return f"{type(self).__name__} '{self.name}'"

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def _spatial_shape(self, input_shape):
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
                f"differ per output position). Received input_shape="
                f"{input_shape} with data_format='{self.data_format}'"
            )
        return spatial, channels

    def output_spatial_shape(
        self, input_shape: Sequence[int | None]
    ) -> tuple[int, ...]:
        """The output spatial shape for `input_shape` (batch included)."""
        return self._geometry(input_shape).output_shape

    def _geometry(self, input_shape):
        spatial, channels = self._spatial_shape(input_shape)
        return _shapes.geometry(
            tuple(spatial),
            channels,
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation_rate,
            self._owner,
        )

    def compute_output_shape(self, input_shape):
        out = self.output_spatial_shape(input_shape)
        batch = tuple(input_shape)[0]
        if self.data_format == "channels_last":
            return (batch, *out, self.filters)
        return (batch, self.filters, *out)

    def build(self, input_shape):
        geo = self._geometry(input_shape)
        channels, out = geo.channels, geo.output_shape
        kernel_shape = geo.kernel_shape(self.filters)
        self._check_kernel_size(kernel_shape, geo)
        self.input_spec = InputSpec(
            ndim=self.rank + 2, axes={self._channel_axis: channels}
        )
        self._built_spatial_shape = geo.spatial_shape
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=per_position_initializer(
                self.kernel_initializer, kernel_shape[0]
            ),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
            dtype=self.dtype,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(*out, self.filters),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                trainable=True,
                dtype=self.dtype,
            )
        else:
            self.bias = None

    def _check_kernel_size(self, kernel_shape, geo):
        """Refuse, before allocating, a kernel the machine cannot hold."""
        limit = max_kernel_bytes()
        dtype = self.dtype or "float32"
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        size = math.prod(kernel_shape) * itemsize
        if limit is None or size <= limit:
            return
        if MAX_KERNEL_BYTES_VARIABLE in os.environ:
            origin = f"The limit was set with ${MAX_KERNEL_BYTES_VARIABLE}."
        else:
            origin = (
                f"The limit is half of this machine's memory; set "
                f"${MAX_KERNEL_BYTES_VARIABLE} (bytes, 0 for no limit) to change it."
            )
        raise ValueError(
            f"{self._owner}: the kernel would have shape {kernel_shape} "
            f"(output positions, kernel_size x channels, filters), "
            f"{_format_bytes(size)} of {dtype}, above the limit of "
            f"{_format_bytes(limit)}. A locally connected layer has separate "
            f"weights for each of its {geo.num_positions} output positions "
            f"(output shape {geo.output_shape} for input spatial shape "
            f"{geo.spatial_shape}), so its weights grow with the input size. "
            f"Use larger `strides` or a smaller input (for example after "
            f"pooling) to have fewer output positions, or a "
            f"keras.layers.Conv{self.rank}D, which shares its weights across "
            f"positions. {origin}"
        )

    def call(self, inputs):
        spatial_shape, _ = _shapes.split_input_shape(inputs.shape, self.data_format)
        built_for = getattr(self, "_built_spatial_shape", None)
        if built_for is not None and any(
            n is not None and n != m for n, m in zip(spatial_shape, built_for)
        ):
            raise ValueError(
                f"{self._owner} was built for inputs of spatial shape "
                f"{built_for} and received an input of spatial shape "
                f"{tuple(spatial_shape)} (input shape {tuple(inputs.shape)}, "
                f"data_format='{self.data_format}'). Its weights are per "
                f"output position, so the spatial shape is fixed when it is "
                f"built: resize the inputs, or use a new layer for this shape."
            )
        bias = None
        if self.use_bias:
            bias = ops.reshape(self.bias, (math.prod(self.bias.shape[:-1]), -1))
        outputs = lc_ops._local_conv(
            inputs,
            self.kernel,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
            bias=bias,
            owner=self._owner,
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
                "implementation": self.implementation,
            }
        )
        return config
