"""keras-localconn: locally connected layers for Keras 3, on every backend.

>>> import keras_localconn
>>> sorted(keras_localconn.__all__)  # doctest: +NORMALIZE_WHITESPACE
['LocallyConnected1D', 'LocallyConnected1DTranspose', 'LocallyConnected2D',
 'LocallyConnected2DTranspose', 'LocallyConnected3D',
 'LocallyConnected3DTranspose', 'from_conv', 'legacy', 'ops', 'to_conv',
 'untie']
"""

from keras_localconn import ops
from keras_localconn.conversion import from_conv, to_conv, untie
from keras_localconn.layers import (
    LocallyConnected1D,
    LocallyConnected1DTranspose,
    LocallyConnected2D,
    LocallyConnected2DTranspose,
    LocallyConnected3D,
    LocallyConnected3DTranspose,
)

__version__ = "0.1.0"

__all__ = [
    "LocallyConnected1D",
    "LocallyConnected2D",
    "LocallyConnected3D",
    "LocallyConnected1DTranspose",
    "LocallyConnected2DTranspose",
    "LocallyConnected3DTranspose",
    "from_conv",
    "legacy",
    "ops",
    "to_conv",
    "untie",
]


def __getattr__(name):
    # `legacy` (Keras 2 file import) needs h5py; load it on first use only.
    if name == "legacy":
        import importlib

        return importlib.import_module("keras_localconn.legacy")
    raise AttributeError(f"module 'keras_localconn' has no attribute {name!r}")
