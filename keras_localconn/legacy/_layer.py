"""One built locally connected layer and the arrays a Keras 2 file stores for it.

Every loader comes here, whatever the file format and wherever the layer sits
(top level, nested model, wrapper, a user's layer class): `legacy.load_model`
and `legacy.load_weights` directly, and Keras' own `model.load_weights` through
the layers' `load_own_variables`. Errors are `ValueError`s naming the layer;
the entry points in `keras_localconn.legacy` prefix them with the file path.
"""

import contextlib
import contextvars
from typing import NamedTuple

import numpy as np

from keras_localconn.legacy._convert import convert_weights


class Converted(NamedTuple):
    """One layer's stored arrays, in the layer's terms.

    Attributes:
        values: the values of the layer's variables (kernel, bias), in order.
        implementation: the Keras 2 `implementation` the kernel was stored
            with, recognised from its shape.
        padding: `None`, or the explicit `(before, after)` pairs a
            `padding="same"` layer must use to compute what Keras 2 computed
            (Keras 2 put `kernel_size // 2` zeros first; Keras 3 splits
            `same` like `Conv` does). The layer's kernel and output shapes are
            the same either way.
    """

    values: list
    implementation: int
    padding: tuple | None


class Keras2Import:
    """What one import did to a model's layers, and how to undo it.

    `converted` lists `(layer, implementation, padding)` for every locally
    connected layer whose arrays were converted, `padding` being the explicit
    padding it was given (or None); `undo` gives back the paddings they had.
    """

    def __init__(self):
        self.converted = []
        self._paddings = []

    def adopt(self, layer, converted):
        """Record `layer`'s conversion; give it Keras 2's padding if it needs it."""
        if converted.padding is not None and layer.padding == "same":
            self._paddings.append((layer, layer.padding))
            layer.padding = converted.padding
            self.converted.append((layer, converted.implementation, layer.padding))
        else:
            self.converted.append((layer, converted.implementation, None))

    def undo(self):
        for layer, padding in reversed(self._paddings):
            layer.padding = padding
        self._paddings.clear()


_CURRENT = contextvars.ContextVar("keras_localconn_keras2_import", default=None)


@contextlib.contextmanager
def importing():
    """Mark the arrays loaded inside as Keras 2's; yields the `Keras2Import`.

    On an exception the layers get their paddings back before it propagates.
    """
    record = Keras2Import()
    token = _CURRENT.set(record)
    try:
        yield record
    except BaseException:
        record.undo()
        raise
    finally:
        _CURRENT.reset(token)


def built_input_shape(layer):
    """The input shape (batch `None`) `layer` was built for, from its InputSpec."""
    axes = layer.input_spec.axes
    if layer.data_format == "channels_last":
        return (None, *(axes[axis] for axis in range(1, layer.rank + 1)), axes[-1])
    return (None, axes[1], *(axes[axis] for axis in range(2, layer.rank + 2)))


def keras2_implementation(layer, kernel):
    """The Keras 2 `implementation` whose layout `kernel` has, or an error.

    1 stored `(positions, K, filters)`, 2 a dense kernel with one axis per
    input and output dimension, 3 a flat vector: the rank tells them apart.
    """
    implementations = {3: 1, 2 * layer.rank + 2: 2, 1: 3}
    ndim = np.ndim(kernel)
    if ndim not in implementations:
        raise ValueError(
            f"{layer._owner}: the stored kernel, of shape {np.shape(kernel)}, "
            f"has the layout of no Keras 2 implementation: 1 stores "
            f"(positions, K, filters), 2 a {2 * layer.rank + 2}-D dense "
            f"kernel, 3 a flat vector of the nonzeros."
        )
    return implementations[ndim]


def convert(layer, arrays, input_shape=None, padding=None):
    """`Converted` values of `layer`'s variables from a Keras 2 layer's arrays.

    `input_shape` and `padding` say what the Keras 2 layer saw when they
    differ from `layer`'s (a layer behind an inserted zero padding layer).
    """
    arrays = [np.asarray(array) for array in arrays]
    if not arrays:
        raise ValueError(f"{layer._owner}: the file stores no weights for it")
    implementation = keras2_implementation(layer, arrays[0])
    config = {
        "name": layer.name,
        "kernel_size": layer.kernel_size,
        "strides": layer.strides,
        "padding": layer.padding if padding is None else padding,
        "data_format": layer.data_format,
        "dilation_rate": layer.dilation_rate,
        "use_bias": layer.use_bias,
        "implementation": implementation,
    }
    converted = convert_weights(arrays, config, input_shape or built_input_shape(layer))
    return Converted(converted.weights, implementation, converted.zero_padding)


def own_variables_store(layer, store):
    """What `layer.load_own_variables` should load from Keras' `store`.

    Keras' loaders of `.keras` and `.weights.h5` files hand each layer its
    stored arrays. Arrays in this package's layout pass unchanged, unless a
    Keras 2 import is under way (`importing`): then they are Keras 2's, and
    are converted like any other (a `channels_first` bias is permuted).
    Outside an import, a kernel in Keras 2's implementation 2 or 3 layout is
    converted too; one that needs Keras 2's own `same` padding is refused
    with an error that points to `keras_localconn.legacy.load_weights`.
    """
    record = _CURRENT.get()
    if not layer.built or layer.quantization_mode is not None:
        return store
    arrays = [store[str(index)] for index in range(len(store.keys()))]
    if not arrays:
        return store
    if record is None and tuple(np.shape(arrays[0])) == tuple(layer._kernel.shape):
        return store
    try:
        converted = convert(layer, arrays)
    except ValueError as error:
        if record is not None:
            raise
        raise ValueError(
            f"{error}. If the file was written by Keras 2 (tf.keras), load it "
            f"with keras_localconn.legacy.load_weights(model, path)."
        ) from error
    if record is None:
        if converted.padding is not None:
            raise ValueError(
                f"{layer._owner}: the file holds a Keras 2 implementation-"
                f"{converted.implementation} kernel of a padding='same' layer, "
                f"which Keras 2 padded {converted.padding} (kernel_size // 2 "
                f"first) where Keras 3 pads otherwise. Load it with "
                f"keras_localconn.legacy.load_weights(model, path), which gives "
                f"the layer Keras 2's padding."
            )
    else:
        record.adopt(layer, converted)
    return {str(index): value for index, value in enumerate(converted.values)}
