"""What the torch DDP and tf.distribute tests share: the model, the start, the check.

Both train the same small model from the same numpy weights in child
processes (this package imported from the source tree) and compare the
distributed run with one device.
"""

import os
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Float32 sums regrouped across devices or processes differ in the last bits.
TOLERANCE = 1e-5


def model():
    """lc2d: kernel (16, 18, 4), bias (4, 4, 4); lc2dt (transposed, 16 input
    positions): kernel (16, 18, 4), bias (6, 6, 2)."""
    import keras

    from keras_localconn import LocallyConnected2D, LocallyConnected2DTranspose

    inputs = keras.Input((6, 6, 2))
    x = LocallyConnected2D(4, 3, activation="tanh", name="lc2d")(inputs)
    outputs = LocallyConnected2DTranspose(2, 3, name="lc2dt")(x)
    return keras.Model(inputs, outputs, name="net")


def initial_weights(shapes, rng):
    """Weights from numpy, not Keras' initializers: every run starts from them
    without relying on seeded backend RNGs."""
    return [(0.3 * rng.standard_normal(shape)).astype("float32") for shape in shapes]


def child_environment(**variables):
    """`os.environ` plus `variables`, with the source tree first on the path,
    so that the children import the keras_localconn the tests import."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **variables)


def max_difference(a, b):
    """The largest absolute difference between two {path: array} reports."""
    return max(
        float(np.abs(np.asarray(a[path]) - np.asarray(b[path])).max()) for path in a
    )
