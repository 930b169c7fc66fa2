"""`LocallyConnected1D`: locally connected layer for temporal (1D) inputs."""

from collections.abc import Callable, Sequence
from typing import Any

from keras import quantizers
from keras.constraints import Constraint
from keras.initializers import Initializer
from keras.regularizers import Regularizer
from keras.saving import register_keras_serializable
from numpy.typing import ArrayLike

from keras_localconn.layers.base_locally_connected import BaseLocallyConnected


@register_keras_serializable(package="keras_localconn")
class LocallyConnected1D(BaseLocallyConnected):
    """Locally connected layer for temporal (1D) inputs.

    Works like `keras.layers.Conv1D`, except that the weights are not
    shared: a different set of filters is applied at each output step.

    Args:
        filters: int, the number of output filters at each position.
        kernel_size: int or tuple of 1 ints, the size of the receptive field.
        strides: int or tuple of 1 ints, the stride of the window. A stride
            above 1 cannot be combined with a `dilation_rate` above 1 on one axis.
        padding: `"valid"`, `"same"`, `"causal"` or `"circular"`,
            case-insensitive, or explicit zero padding. Output sizes and the
            split of `"same"` padding equal those of `keras.layers.Conv1D`.
            `"causal"` pads `(kernel_size - 1) * dilation_rate` zeros
            on the left, so that output `t` sees no input after `t`.
            `"circular"` pads as `"same"` does, with values from the opposite
            edge (a periodic boundary; pads wider than the axis wrap again).
            Explicit zero padding is an int (both sides) or a
            `(before, after)` pair, as `keras.layers.ZeroPadding1D` takes it.
        data_format: `"channels_last"` (inputs `(batch, steps, channels)`)
            or `"channels_first"` (inputs `(batch, channels, steps)`).
            None means `keras.config.image_data_format()`.
        activation: Activation function; None means linear.
        use_bias: bool, whether the layer adds a bias (one per output
            position and filter).
        kernel_initializer: Initializer of the kernel. Variance-scaling
            initializers (the default `"glorot_uniform"`, `"he_normal"`, ...)
            count fans per output position (`fan_in = K`, `fan_out = filters`),
            as for a convolution kernel; Keras 2 counted them over the whole
            `(P, K, filters)` array, giving weights `sqrt(P)` times smaller.
        bias_initializer: Initializer of the bias.
        kernel_regularizer: Regularizer applied to the kernel.
        bias_regularizer: Regularizer applied to the bias.
        activity_regularizer: Regularizer applied to the output.
        kernel_constraint: Constraint applied to the kernel after each
            optimizer update.
        bias_constraint: Constraint applied to the bias after each update.
        implementation: 1, 2 or 3. Accepted so that Keras 2 configs
            deserialize; every value computes the same way here and stores
            the kernel in Keras 2's implementation-1 layout (Keras 2 weights
            saved with implementation 2 or 3 are converted by
            `keras_localconn.legacy`). How it computes: the engine gathers
            patches and contracts them with their positions' kernels in
            batched matmuls, all positions at once or in chunks, as the
            shapes, the backend and the machine decide; one position group
            (see `position_groups`) computes, where it can, with
            `keras.ops.conv`.
        dilation_rate: int or tuple of 1 ints, the dilation of the kernel.
        position_groups: which output positions share a kernel. None (the
            default): each has its own. A block shape (an int or 1 positive
            ints): blocks of that many neighbouring output positions per
            axis share one, blocks in row-major order, partial blocks at the
            far edges. An integer array (or nested list) of the output
            spatial shape: position `o` uses kernel `position_groups[o]`,
            values `0 .. T-1`, each used (tiles: `np.indices(out) % t`
            combined into one id, bands, mirror-symmetric halves). With one
            group the layer is `keras.layers.Conv1D`. See the "Position
            groups" page.
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
        `(batch, steps, channels)` with `"channels_last"`, or
        `(batch, channels, steps)` with `"channels_first"`. Spatial sizes
        must be known when the layer is built.

    Output shape:
        `(batch, new_steps, filters)` with `"channels_last"`, or
        `(batch, filters, new_steps)` with `"channels_first"`.

    Weights:
        - kernel: `(P, K, filters)`, where `P = prod(output spatial shape)`
          (output positions in row-major order) and
          `K = prod(kernel_size) * channels`, ordered (kernel offsets...,
          channel) for `"channels_last"` and (channel, kernel offsets...)
          for `"channels_first"`: Keras 2's implementation-1 layout. With
          `position_groups`, `(T, K, filters)`: one kernel per group.
        - bias: `(*output spatial shape, filters)`; `bias[o..., f]` is added
          at output position `o`, filter `f`, in both data formats. With
          `position_groups`, `(T, filters)`: one bias per group.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_localconn import LocallyConnected1D
    >>> # A sequence of 10 vectors of 32 dimensions, 64 filters of width 3.
    >>> model = keras.Sequential(
    ...     [keras.Input((10, 32)), LocallyConnected1D(64, 3)]
    ... )
    >>> model.output_shape
    (None, 8, 64)
    >>> model.count_params()  # 8 * (3 * 32 * 64) + 8 * 64
    49664
    >>> model.predict(np.zeros((2, 10, 32)), verbose=0).shape
    (2, 8, 64)
    >>> # A periodic signal: "circular" pads with the opposite end.
    >>> layer = LocallyConnected1D(
    ...     1, 3, padding="circular", kernel_initializer="ones", use_bias=False
    ... )
    >>> x = np.arange(5, dtype="float32").reshape(1, 5, 1)  # 0, 1, 2, 3, 4
    >>> keras.ops.convert_to_numpy(layer(x))[0, :, 0].tolist()  # 4+0+1, ...
    [5.0, 3.0, 6.0, 9.0, 7.0]
    >>> # Explicit zero padding, as ZeroPadding1D takes it: 2 before, 0 after.
    >>> LocallyConnected1D(4, 3, padding=(2, 0)).compute_output_shape((None, 5, 1))
    (None, 5, 4)
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str | int | Sequence = "valid",
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
        position_groups: int | Sequence[int] | ArrayLike | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        quantization_config: "quantizers.QuantizationConfig | None" = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            rank=1,
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            implementation=implementation,
            dilation_rate=dilation_rate,
            position_groups=position_groups,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            quantization_config=quantization_config,
            **kwargs,
        )
