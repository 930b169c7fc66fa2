"""`LocallyConnected2DTranspose`: transposed locally connected layer, 2D."""

from collections.abc import Callable, Sequence
from typing import Any

from keras import quantizers
from keras.constraints import Constraint
from keras.initializers import Initializer
from keras.regularizers import Regularizer
from keras.saving import register_keras_serializable

from keras_localconn.layers.base_locally_connected_transpose import (
    BaseLocallyConnectedTranspose,
)


@register_keras_serializable(package="keras_localconn")
class LocallyConnected2DTranspose(BaseLocallyConnectedTranspose):
    """Transposed locally connected layer for 2D inputs (images).

    Works like `keras.layers.Conv2DTranspose`, except that the weights are not
    shared: each input position spreads its values over its window of the
    output with its own filters. It is the adjoint (the transpose) of
    `LocallyConnected2D`'s linear map with respect to its input, and the
    usual upsampling half of an encoder-decoder built from
    `LocallyConnected2D`.

    Args:
        filters: int, the number of output channels.
        kernel_size: int or tuple of 2 ints, the size of the window that
            each input position writes to.
        strides: int or tuple of 2 ints, the upsampling factor. A stride
            above 1 cannot be combined with a `dilation_rate` above 1 on one
            axis.
        padding: `"valid"` or `"same"`, case-insensitive. Output sizes equal
            those of `keras.layers.Conv2DTranspose`: `"same"` gives `input * strides`,
            `"valid"` `(input - 1) * strides + max(kernel_size, strides)`
            (with a dilated kernel size).
        output_padding: None, or an int or tuple of 2 ints, each `>= 0`
            and smaller than the stride of its axis: the output size is then
            `(input - 1) * strides + kernel_size + output_padding` for
            `"valid"` and `(input - 1) * strides + kernel_size % 2 +
            output_padding` for `"same"`, as in `keras.layers.Conv2DTranspose`.
        data_format: `"channels_last"` (inputs `(batch, rows, cols, channels)`)
            or `"channels_first"` (inputs `(batch, channels, rows, cols)`).
            None means `keras.config.image_data_format()`.
        dilation_rate: int or tuple of 2 ints, the dilation of the kernel.
        activation: Activation function; None means linear.
        use_bias: bool, whether the layer adds a bias (one per output
            position and filter).
        kernel_initializer: Initializer of the kernel. Variance-scaling
            initializers (the default `"glorot_uniform"`, `"he_normal"`, ...)
            count fans per input position (`fan_in = K`, `fan_out =
            channels`), as for the forward layers.
        bias_initializer: Initializer of the bias.
        kernel_regularizer: Regularizer applied to the kernel.
        bias_regularizer: Regularizer applied to the bias.
        activity_regularizer: Regularizer applied to the output.
        kernel_constraint: Constraint applied to the kernel after each
            optimizer update.
        bias_constraint: Constraint applied to the bias after each update.
        lora_rank: None, or a positive int: LoRA is enabled with this rank
            when the layer is built (see `enable_lora`), as in
            `keras.layers.Dense`.
        lora_alpha: the LoRA scale is `lora_alpha / lora_rank`; None means
            `lora_rank` (a scale of 1).
        quantization_config: the `keras.quantizers.QuantizationConfig` of a
            quantized layer (see `quantize`), as `keras.layers.Dense` takes it;
            None for the defaults of the quantization mode.
        **kwargs: Base layer keyword arguments (`name`, `dtype`,
            `trainable`, ...).

    Input shape:
        `(batch, rows, cols, channels)` with `"channels_last"`, or
        `(batch, channels, rows, cols)` with `"channels_first"`. Spatial sizes
        must be known when the layer is built.

    Output shape:
        `(batch, new_rows, new_cols, filters)` with `"channels_last"`, or
        `(batch, filters, new_rows, new_cols)` with `"channels_first"`.

    Weights:
        - kernel: `(P, K, channels)`, where `P = prod(input spatial shape)`
          (input positions in row-major order), `K = prod(kernel_size) *
          filters`, ordered (kernel offsets..., filter) for `"channels_last"`
          and (filter, kernel offsets...) for `"channels_first"`, and
          `channels` the input channels: the kernel of the
          `LocallyConnected2D` that maps this layer's output back to its
          input.
        - bias: `(*output spatial shape, filters)`; `bias[o..., f]` is added
          at output position `o`, filter `f`, in both data formats.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_localconn import LocallyConnected2DTranspose
    >>> # 8x8 feature maps of 16 channels to a 16x16 image of 3 channels.
    >>> model = keras.Sequential(
    ...     [keras.Input((8, 8, 16)), LocallyConnected2DTranspose(3, 2, strides=2)]
    ... )
    >>> model.output_shape
    (None, 16, 16, 3)
    >>> model.count_params()  # 8 * 8 * (2 * 2 * 3 * 16) + 16 * 16 * 3
    13056
    >>> model.predict(np.zeros((2, 8, 8, 16)), verbose=0).shape
    (2, 16, 16, 3)
    """

    def __init__(
        self,
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
            rank=2,
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            output_padding=output_padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
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
