"""The locally connected layers, one small file per rank."""

from keras_localconn.layers.base_locally_connected import BaseLocallyConnected
from keras_localconn.layers.locally_connected1d import LocallyConnected1D
from keras_localconn.layers.locally_connected2d import LocallyConnected2D
from keras_localconn.layers.locally_connected3d import LocallyConnected3D

__all__ = [
    "BaseLocallyConnected",
    "LocallyConnected1D",
    "LocallyConnected2D",
    "LocallyConnected3D",
]
