"""The public functional API: locally connected convolutions on `keras.ops`.

The static shape helpers, the two ops, `local_conv` and
`local_conv_transpose`. As `keras.ops.conv` does, each op called on symbolic
tensors (`keras.Input`) is one `keras.Operation` node whose output shape
comes from `compute_output_spec`; called on tensors, it runs its engine
(`_local_conv`, `_transpose`) directly; and `formulation`, which pins
how `local_conv` computes.
"""

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np

from keras_localconn import _arguments, _local_conv, _schedule, _transpose

__all__ = [
    "formulation",
    "local_conv",
    "local_conv_kernel_shape",
    "local_conv_output_shape",
    "local_conv_padding",
    "local_conv_transpose",
]


# --------------------------------------------------------------------------
# Static shapes
# --------------------------------------------------------------------------


def local_conv_padding(
    spatial_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence = "valid",
    dilation_rate: int | Sequence[int] = 1,
) -> tuple[tuple[int, int], ...]:
    """Per-axis ``(before, after)`` padding that `local_conv` applies.

    ``"valid"``: none. ``"same"``: output length ``ceil(n / stride)``, with
    the total padding split as `keras.layers.Conv*D` split it (the smaller
    half before). ``"circular"``: the amounts of ``"same"`` (filled from the
    opposite edge rather than with zeros). ``"causal"`` (1D):
    ``(kernel_size - 1) * dilation_rate`` before, none after. Explicit
    padding (an int, N ints or N ``(before, after)`` pairs, as
    `keras.layers.ZeroPadding*D` takes it) is returned as pairs.

    >>> from keras_localconn.ops import local_conv_padding
    >>> local_conv_padding((6, 5), kernel_size=3, strides=2, padding="same")
    ((0, 1), (1, 1))
    """
    geo = _arguments.standardize_geometry(
        spatial_shape,
        1,
        kernel_size,
        strides,
        padding,
        dilation_rate,
        "local_conv_padding",
    )
    return geo.pads


def local_conv_output_shape(
    spatial_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence = "valid",
    dilation_rate: int | Sequence[int] = 1,
) -> tuple[int, ...]:
    """Output spatial shape of a local convolution over `spatial_shape`.

    Raises a `ValueError` naming the dimension when an output size is <= 0.

    >>> from keras_localconn.ops import local_conv_output_shape
    >>> local_conv_output_shape((63, 63), kernel_size=9)
    (55, 55)
    """
    geo = _arguments.standardize_geometry(
        spatial_shape,
        1,
        kernel_size,
        strides,
        padding,
        dilation_rate,
        "local_conv_output_shape",
    )
    return geo.output_shape


def local_conv_kernel_shape(
    output_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    channels: int,
    filters: int,
) -> tuple[int, int, int]:
    """The kernel shape ``(P, K, filters)`` for the given output spatial shape.

    >>> from keras_localconn.ops import local_conv_kernel_shape
    >>> local_conv_kernel_shape((55, 55), kernel_size=9, channels=16, filters=16)
    (3025, 1296, 16)
    """
    owner = "local_conv_kernel_shape"
    output_shape = _arguments.standardize_tuple(
        output_shape, len(output_shape), "output_shape", owner
    )
    kernel_size = _arguments.standardize_tuple(
        kernel_size, len(output_shape), "kernel_size", owner
    )
    channels = _arguments.standardize_positive_int(channels, "channels", owner)
    filters = _arguments.standardize_positive_int(filters, "filters", owner)
    return (math.prod(output_shape), math.prod(kernel_size) * channels, filters)


# --------------------------------------------------------------------------
# The ops
# --------------------------------------------------------------------------


def _config(operation, names):
    """`operation`'s name and its arguments `names`, each an attribute."""
    return {"name": operation.name, **{n: getattr(operation, n) for n in names}}


def _result_dtype(inputs, kernel):
    return keras.backend.result_type(inputs.dtype, kernel.dtype)


class LocalConv(keras.Operation):
    """`local_conv` as one node of a symbolic graph.

    The arguments are `local_conv`'s, from `kernel_size` on; each is an
    attribute of the same name, and `get_config` returns them all with the
    `name`, as the operation behind `keras.ops.conv` does (stated here rather
    than left to Keras' automatic config, which before Keras 3.14 holds only
    the arguments passed).
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str | int | Sequence = "valid",
        dilation_rate: int | Sequence[int] = 1,
        data_format: str | None = None,
        position_groups: int | Sequence | None = None,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.dilation_rate = dilation_rate
        self.data_format = data_format
        self.position_groups = position_groups

    _WINDOW = ("kernel_size", "strides", "padding", "dilation_rate", "data_format")

    def _arguments(self):
        return tuple(getattr(self, name) for name in self._WINDOW)

    def get_config(self):
        return _config(self, (*self._WINDOW, "position_groups"))

    def call(self, inputs, kernel):
        return _local_conv.local_conv(
            inputs, kernel, *self._arguments(), position_groups=self.position_groups
        )

    def compute_output_spec(self, inputs, kernel):
        geo, channels_last, _ = _local_conv.checked_geometry(
            inputs,
            kernel,
            *self._arguments(),
            owner="local_conv",
            position_groups=self.position_groups,
        )
        shape = _local_conv.output_shape(
            geo, inputs.shape[0], kernel.shape[-1], channels_last
        )
        return keras.KerasTensor(shape, dtype=_result_dtype(inputs, kernel))


class LocalConvTranspose(keras.Operation):
    """`local_conv_transpose` as one node of a symbolic graph.

    The arguments are `local_conv_transpose`'s, from `kernel_size` on; each
    is an attribute of the same name, and `get_config` returns them all with
    the `name`, as the operation behind `keras.ops.conv_transpose` does.
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        output_padding: int | Sequence[int] | None = None,
        dilation_rate: int | Sequence[int] = 1,
        data_format: str | None = None,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.output_padding = output_padding
        self.dilation_rate = dilation_rate
        self.data_format = data_format

    _WINDOW = (
        "kernel_size",
        "strides",
        "padding",
        "output_padding",
        "dilation_rate",
        "data_format",
    )

    def _arguments(self):
        return tuple(getattr(self, name) for name in self._WINDOW)

    def get_config(self):
        return _config(self, self._WINDOW)

    def call(self, inputs, kernel):
        return _transpose.local_conv_transpose(inputs, kernel, *self._arguments())

    def compute_output_spec(self, inputs, kernel):
        geo, channels_last = _transpose.checked_geometry(
            inputs, kernel, *self._arguments(), owner="local_conv_transpose"
        )
        shape = _transpose.output_shape(geo, inputs.shape[0], channels_last)
        return keras.KerasTensor(shape, dtype=_result_dtype(inputs, kernel))


def _plain_position_groups(position_groups):
    """`position_groups` in plain Python values (an array map as nested
    lists), which an `Operation`'s automatic config holds."""
    if position_groups is None or isinstance(position_groups, (int, tuple, list)):
        return position_groups
    return np.asarray(position_groups).tolist()


def _symbolic(*tensors):
    return any(keras.utils.is_keras_tensor(t) for t in tensors)


def local_conv(
    inputs: Any,
    kernel: Any,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence = "valid",
    dilation_rate: int | Sequence[int] = 1,
    data_format: str | None = None,
    position_groups: Any = None,
) -> Any:
    """Locally connected N-D convolution (unshared weights), without bias.

    Like `keras.ops.conv`, except that every output position has its own
    filters, or, with `position_groups`, every group of positions. Works for
    1, 2 and 3 spatial dimensions on every Keras backend.

    Args:
        inputs: Tensor of rank N + 2, ``(batch, *spatial, channels)`` if
            `data_format` is ``"channels_last"`` or ``(batch, channels,
            *spatial)`` if ``"channels_first"``. Spatial sizes must be static.
        kernel: Tensor of shape ``(P, K, filters)``: ``P`` is the product of
            the output spatial sizes (row-major order of output positions);
            ``(T, K, filters)`` with ``T`` position groups,
            ``K = prod(kernel_size) * channels``, ordered (kernel offsets...,
            channel) for ``channels_last`` and (channel, kernel offsets...)
            for ``channels_first``; the layout of Keras 2's
            ``LocallyConnected*D(implementation=1)``.
        kernel_size: int or tuple of N ints, the receptive field size.
        strides: int or tuple of N ints. Defaults to 1.
        padding: ``"valid"``, ``"same"``, ``"circular"``, (1D only)
            ``"causal"``, case-insensitive, or explicit zero padding. Output
            sizes and the split of ``same`` padding are those of
            `keras.layers.Conv*D`. ``"circular"`` pads as ``"same"`` does but
            with values from the opposite edge (a periodic boundary, as on a
            longitude grid; pads larger than the axis wrap around again).
            Explicit zero padding is given the way
            `keras.layers.ZeroPadding2D` takes it: an int (every side), a
            tuple of N ints (symmetric per axis) or a tuple of N
            ``(before, after)`` pairs; in 1D also one ``(before, after)``
            pair, as `keras.layers.ZeroPadding1D` takes it.
        dilation_rate: int or tuple of N ints. Defaults to 1. Strides > 1 and
            dilation > 1 cannot be combined on one axis.
        data_format: ``"channels_last"``, ``"channels_first"`` or None
            (`keras.config.image_data_format()`).
        position_groups: output positions that share a kernel. None (the
            default): every position has its own. A **block shape**, an int
            or N positive ints: the output positions cut into blocks of that
            many neighbours per axis (partial blocks at the far edges), one
            kernel per block, blocks in row-major order. A **map**, an
            integer array (or nested list) of the output spatial shape:
            position ``p`` uses kernel ``position_groups[p]``, values
            ``0 .. T-1``, each used (``np.indices(out).sum(0) % 2``, bands,
            mirror-symmetric halves, any partition). One group is
            `keras.ops.conv` with that kernel.

    Returns:
        Tensor of rank N + 2: ``(batch, *out, filters)`` for
        ``channels_last``, ``(batch, filters, *out)`` for ``channels_first``,
        in the dtype of `inputs` and `kernel` (cast them to one dtype first).

    Example:

    >>> import numpy as np
    >>> from keras_localconn.ops import local_conv
    >>> x = np.ones((2, 5, 3), "float32")        # batch 2, length 5, 3 channels
    >>> kernel = np.ones((3, 3 * 3, 4), "float32")  # 3 positions, K=3*3, 4 filters
    >>> y = local_conv(x, kernel, kernel_size=3)
    >>> tuple(y.shape)
    (2, 3, 4)
    >>> float(y[0, 0, 0])
    9.0

    Two kernels, one per half of the output (blocks of 2 positions):

    >>> x = np.ones((2, 6, 3), "float32")  # 4 output positions
    >>> kernel = np.stack([np.ones((9, 4)), -np.ones((9, 4))]).astype("float32")
    >>> y = local_conv(x, kernel, kernel_size=3, position_groups=2)
    >>> [float(v) for v in y[0, :, 0]]
    [9.0, 9.0, -9.0, -9.0]
    """
    arguments = (kernel_size, strides, padding, dilation_rate, data_format)
    if _symbolic(inputs, kernel):
        operation = LocalConv(
            *arguments, position_groups=_plain_position_groups(position_groups)
        )
        return operation.symbolic_call(inputs, kernel)
    return _local_conv.local_conv(
        inputs, kernel, *arguments, position_groups=position_groups
    )


def local_conv_transpose(
    inputs: Any,
    kernel: Any,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str = "valid",
    output_padding: int | Sequence[int] | None = None,
    dilation_rate: int | Sequence[int] = 1,
    data_format: str | None = None,
) -> Any:
    """Transposed locally connected N-D convolution (unshared weights), no bias.

    The adjoint of `local_conv` with respect to its input: for a kernel `W`,
    ``local_conv_transpose(y, W, ...)`` is the gradient of
    ``sum(y * local_conv(x, W, ...))`` with respect to ``x``. It maps each
    input position to a window of the output, as `keras.ops.conv_transpose`
    does, except that every input position has its own filters; with one
    kernel copied to every position it equals `keras.layers.Conv*DTranspose`.
    Works for 1, 2 and 3 spatial dimensions on every Keras backend.

    Args:
        inputs: Tensor of rank N + 2, ``(batch, *spatial, channels)`` if
            `data_format` is ``"channels_last"`` or ``(batch, channels,
            *spatial)`` if ``"channels_first"``. Spatial sizes must be static.
        kernel: Tensor of shape ``(P, K, channels)``: ``P`` is the product of
            the *input* spatial sizes (row-major order of input positions),
            ``K = prod(kernel_size) * filters`` with ``filters`` the output
            channels, ordered as `local_conv`'s kernel: (kernel offsets...,
            filter) for ``channels_last``, (filter, kernel offsets...) for
            ``channels_first``. It is the kernel of the `local_conv` that maps
            the output of this op back to its input.
        kernel_size: int or tuple of N ints, the window size.
        strides: int or tuple of N ints, the upsampling factor. Defaults to 1.
        padding: ``"valid"`` or ``"same"``, case-insensitive. Output sizes are
            those of `keras.layers.Conv*DTranspose`: ``"same"`` gives
            ``input * strides``.
        output_padding: None, or an int or tuple of N ints, each ``>= 0`` and
            smaller than the stride of its axis: how many positions to add at
            the end of each output axis, as in `keras.layers.Conv*DTranspose`.
            None lets the sizes follow from `padding`.
        dilation_rate: int or tuple of N ints. Defaults to 1. Strides > 1 and
            dilation > 1 cannot be combined on one axis.
        data_format: ``"channels_last"``, ``"channels_first"`` or None
            (`keras.config.image_data_format()`).

    Returns:
        Tensor of rank N + 2: ``(batch, *out, filters)`` for
        ``channels_last``, ``(batch, filters, *out)`` for ``channels_first``,
        in the dtype of `inputs` and `kernel` (cast them to one dtype first).

    Example:

    >>> import numpy as np
    >>> from keras_localconn.ops import local_conv_transpose
    >>> y = np.ones((2, 3, 4), "float32")  # batch 2, length 3, 4 channels
    >>> kernel = np.ones((3, 2 * 5, 4), "float32")  # 3 positions, K=2*5, 4 in
    >>> x = local_conv_transpose(y, kernel, kernel_size=2, strides=2)
    >>> tuple(x.shape)  # length 3 * 2, 5 filters
    (2, 6, 5)
    >>> float(x[0, 0, 0])
    4.0
    """
    arguments = (
        kernel_size,
        strides,
        padding,
        output_padding,
        dilation_rate,
        data_format,
    )
    if _symbolic(inputs, kernel):
        return LocalConvTranspose(*arguments).symbolic_call(inputs, kernel)
    return _transpose.local_conv_transpose(inputs, kernel, *arguments)


# --------------------------------------------------------------------------
# How local_conv computes
# --------------------------------------------------------------------------


@contextlib.contextmanager
def formulation(**choices: Any) -> Iterator[None]:
    """Pin how the ops (and the layers built on them) compute, inside a block.

    By default each call derives its formulation from the static shapes, the
    backend and the machine (the cache size the operating system reports,
    the cores this process may use, whether Keras computes on an
    accelerator): see the Performance page. Inside this block, the choices
    given replace the rule's, for the calls traced or run in it (a traced
    function keeps what it was traced with). Blocks nest; the inner choice
    wins. The result is the same up to float rounding; only speed and memory
    change.

    Args:
        **choices: any of
            ``chunk`` (output positions per chunk, or None for all positions
            at once),
            ``batch_before_channels`` (input rows of ``(batch, channels)``,
            else ``(channels, batch)``),
            ``loop_by_map`` (chunks through `keras.ops.map`, else a Python
            loop),
            ``group`` (chunks whose input-gradient contributions the
            backward pass adds at once; None for all),
            ``scatter_add`` (the backward pass adds them with one scatter-add,
            Keras >= 3.14, else with a segment sum; `local_conv_transpose`
            adds its contributions with one scatter-add, else gathers and
            sums them; None for what this Keras has),
            ``conv`` (one position group computes as `keras.ops.conv`, else
            as a grouped matmul),
            ``taps`` (compute tap by tap, without patches: one strided slice
            of the input per kernel offset; the default where channels *
            filters are few). With position groups, ``chunk`` counts
            *units*: groups, or equal parts of the larger groups.

    Raises:
        TypeError: for a choice not named above.

    Example:

    >>> import numpy as np
    >>> from keras_localconn.ops import formulation, local_conv
    >>> x = np.ones((2, 6, 3), "float32")
    >>> kernel = np.ones((4, 3 * 3, 2), "float32")
    >>> with formulation(chunk=2):  # two positions at a time
    ...     y = local_conv(x, kernel, kernel_size=3)
    >>> float(y[0, 0, 0])
    9.0
    """
    with _schedule.pinned(**choices):
        yield
