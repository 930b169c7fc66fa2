"""Rank-generic base class of the transposed locally connected layers."""

from collections.abc import Callable, Sequence
from typing import Any

from keras import quantizers
from keras.constraints import Constraint
from keras.initializers import Initializer
from keras.regularizers import Regularizer

from keras_localconn import _arguments, _shapes, _transpose
from keras_localconn.layers._base import LocalBase


class BaseLocallyConnectedTranspose(LocalBase):
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

    _positions = "input"
    _conv_suffix = "Transpose"
    # Its kernel (P, K, channels) contracts the input channels: one scale per
    # (position, row of K), and int4 packs along K (the output side).
    _contracted_axis = 2
    _output_axis = 1

    def __init__(
        self,
        rank: int,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        output_padding: int | Sequence[int] | None = None,
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
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
        super().__init__(
            rank,
            filters,
            data_format,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            quantization_config=quantization_config,
            **kwargs,
        )
        (
            self.kernel_size,
            self.strides,
            self.padding,
            self.output_padding,
            self.dilation_rate,
        ) = _arguments.standardize_transpose_window(
            rank,
            kernel_size,
            strides,
            padding,
            output_padding,
            dilation_rate,
            self._owner,
        )

    _engine = staticmethod(_transpose.local_conv_transpose)

    def _window(self):
        return (
            self.kernel_size,
            self.strides,
            self.padding,
            self.output_padding,
            self.dilation_rate,
        )

    def _geometry(self, input_shape):
        """The forward geometry whose adjoint this layer computes."""
        spatial, _ = self._input_sizes(input_shape)
        return _shapes.transpose_geometry(
            spatial, self.filters, *self._window(), self._owner
        )

    def _output_spatial_shape(self, geo):
        return geo.spatial_shape

    def _kernel_shape(self, geo, channels):
        return geo.kernel_shape(channels)

    def get_config(self):
        return {**super().get_config(), "output_padding": self.output_padding}
