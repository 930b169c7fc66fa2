"""The locally connected layers, one small file per rank."""

from keras_localconn.layers.base_locally_connected import BaseLocallyConnected
from keras_localconn.layers.base_locally_connected_transpose import (
    BaseLocallyConnectedTranspose,
)
from keras_localconn.layers.locally_connected1d import LocallyConnected1D
from keras_localconn.layers.locally_connected1d_transpose import (
    LocallyConnected1DTranspose,
)
from keras_localconn.layers.locally_connected2d import LocallyConnected2D
from keras_localconn.layers.locally_connected2d_transpose import (
    LocallyConnected2DTranspose,
)
from keras_localconn.layers.locally_connected3d import LocallyConnected3D
from keras_localconn.layers.locally_connected3d_transpose import (
    LocallyConnected3DTranspose,
)

__all__ = [
    "BaseLocallyConnected",
    "LocallyConnected1D",
    "LocallyConnected2D",
    "LocallyConnected3D",
    "BaseLocallyConnectedTranspose",
    "LocallyConnected1DTranspose",
    "LocallyConnected2DTranspose",
    "LocallyConnected3DTranspose",
]
