"""Rank-generic base class of the transposed locally connected layers."""

import math

from keras import activations, constraints, initializers, ops, regularizers
from keras.layers import InputSpec, Layer

from keras_localconn import _arguments, _shapes, _transpose
from keras_localconn.layers.base_locally_connected import per_position_initializer


class BaseLocallyConnectedTranspose(Layer):
    """N-D transposed locally connected layer: unshared-weight upsampling.

    Every input position has its own `(K, channels)` kernel, which it spreads
    over its window of the output, as `keras.layers.Conv*DTranspose` does with
    one shared kernel. Public layers (`LocallyConnected1DTranspose`, `2D`,
    `3D`) are thin subclasses that fix `rank`. The arguments, and their
    positional order, are those of `keras.layers.Conv*DTranspose`.

    Not a subclass of `BaseLocallyConnected`: code that finds the forward
    layers by type (the Keras 2 weight conversion) must not take these for
    them.

    Args: see `LocallyConnected2DTranspose`.
    """

    def __init__(
        self,
        rank,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        output_padding=None,
        data_format=None,
        dilation_rate=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        owner = self._owner
        self.rank = rank
        self.filters = _arguments.normalize_positive_int(filters, "filters", owner)
        (
            self.kernel_size,
            self.strides,
            self.padding,
            self.output_padding,
            self.dilation_rate,
        ) = _arguments.normalize_transpose_geometry(
            rank, kernel_size, strides, padding, output_padding, dilation_rate, owner
        )
        self.data_format = _arguments.normalize_data_format(data_format, owner)
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

    def _geometry(self, input_shape):
        """The forward geometry whose adjoint this layer computes."""
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
                f"differ per input position). Received input_shape="
                f"{input_shape} with data_format='{self.data_format}'"
            )
        return _shapes.transpose_geometry(
            tuple(spatial),
            self.filters,
            self.kernel_size,
            self.strides,
            self.padding,
            self.output_padding,
            self.dilation_rate,
            self._owner,
        )

    def output_spatial_shape(self, input_shape):
        """The output spatial shape for `input_shape` (batch included)."""
        return self._geometry(input_shape).spatial_shape

    def compute_output_shape(self, input_shape):
        out = self.output_spatial_shape(input_shape)
        batch = tuple(input_shape)[0]
        if self.data_format == "channels_last":
            return (batch, *out, self.filters)
        return (batch, self.filters, *out)

    def build(self, input_shape):
        geo = self._geometry(input_shape)
        channels = _shapes.split_input_shape(input_shape, self.data_format)[1]
        self.input_spec = InputSpec(
            ndim=self.rank + 2, axes={self._channel_axis: channels}
        )
        kernel_shape = geo.kernel_shape(channels)
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
                shape=(*geo.spatial_shape, self.filters),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                trainable=True,
                dtype=self.dtype,
            )
        else:
            self.bias = None

    def call(self, inputs):
        bias = None
        if self.use_bias:
            bias = ops.reshape(self.bias, (math.prod(self.bias.shape[:-1]), -1))
        outputs = _transpose._local_conv_transpose(
            inputs,
            self.kernel,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            output_padding=self.output_padding,
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
                "output_padding": self.output_padding,
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
