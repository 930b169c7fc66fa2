"""Rank-generic base class of the locally connected layers."""

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from keras import quantizers
from keras.constraints import Constraint
from keras.initializers import Initializer
from keras.regularizers import Regularizer
from numpy.typing import ArrayLike

from keras_localconn import _arguments, _groups, _local_conv, _shapes
from keras_localconn.layers._base import LocalBase

_IMPLEMENTATIONS = (1, 2, 3)


class BaseLocallyConnected(LocalBase):
    """N-D locally connected layer: a convolution with unshared weights.

    Every output position has its own `(K, filters)` kernel, or, with
    `position_groups`, every group of positions (`_groups`). Public layers
    (`LocallyConnected1D`, `2D`, `3D`) are thin subclasses that fix `rank`.

    The positional order of the arguments is Keras 2's (`activation` follows
    `data_format`); the arguments Keras 2 did not have (`dilation_rate`,
    `position_groups`, `lora_rank`, `lora_alpha`, `quantization_config`)
    follow, and are best passed by keyword.

    Args: see `LocallyConnected2D`.
    """

    def __init__(
        self,
        rank: int,
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
        owner = self._owner
        (
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation_rate,
        ) = _arguments.standardize_window(
            rank, kernel_size, strides, padding, dilation_rate, owner
        )
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"{owner}: `implementation` must be one of {_IMPLEMENTATIONS}. "
                f"Received: implementation={implementation!r}"
            )
        if implementation != 1:
            # No layer name in the text: Python's default filter then shows
            # it once per calling line, not once per layer of a Keras 2 model.
            warnings.warn(
                f"keras_localconn: implementation={implementation} (a Keras 2 "
                f"argument) is accepted so that Keras 2 models and configs load, "
                f"and has no effect: the kernel is always stored as Keras 2's "
                f"implementation 1 stored it, (positions, K, filters), and the "
                f"computation is chosen by shape and backend.",
                UserWarning,
                stacklevel=3,
            )
        self.implementation = implementation
        self.position_groups = _groups.standardize(position_groups, rank, owner)

    _engine = staticmethod(_local_conv.local_conv)

    def _window(self):
        return (self.kernel_size, self.strides, self.padding, self.dilation_rate)

    def _geometry(self, input_shape):
        spatial, channels = self._input_sizes(input_shape)
        return _shapes.geometry(spatial, channels, *self._window(), self._owner)

    def _output_spatial_shape(self, geo):
        return geo.output_shape

    def build(self, input_shape):
        # The groups of the built output shape (a map checked against it),
        # resolved once: the kernel and bias shapes and every call read them.
        self._built_grouping = _groups.resolve(
            self.position_groups,
            self._geometry(input_shape).output_shape,
            self._owner,
        )
        super().build(input_shape)

    @property
    def output_position_groups(self) -> np.ndarray | None:
        """The kernel of every output position, row-major: ``(P,)`` int64
        indices into the kernel's first axis, for the input shape the layer
        was built for; None where every position has its own kernel (no
        `position_groups`)."""
        if not self.built:
            raise AttributeError(
                f"{self._owner}: build the layer before accessing "
                f"`output_position_groups` (its positions follow from the "
                f"input shape)."
            )
        if self._built_grouping is None:
            return None
        return self._built_grouping.groups

    def _kernel_shape(self, geo, channels):
        if self._built_grouping is None:
            return geo.kernel_shape(self.filters)
        return (self._built_grouping.count, geo.patch_size, self.filters)

    def _bias_shape(self, geo):
        if self._built_grouping is None:
            return super()._bias_shape(geo)
        return (self._built_grouping.count, self.filters)

    def _engine_options(self):
        return {"position_groups": self._built_grouping}

    def load_own_variables(self, store):
        # Keras' `.keras`/`.weights.h5` loaders hand every layer its arrays:
        # Keras 2's kernel layouts are converted here (see legacy._layer).
        from keras_localconn.legacy import _layer  # legacy imports the layers

        super().load_own_variables(_layer.own_variables_store(self, store))

    def get_config(self):
        return {
            **super().get_config(),
            "implementation": self.implementation,
            "position_groups": _groups.serialize(self.position_groups),
        }
