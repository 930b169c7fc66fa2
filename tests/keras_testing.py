"""Keras' own layer test harness, the one place the tests use `keras.src`.

Keras exports no public `TestCase`; its `run_layer_test` (serialization,
shapes, weights, training, mixed precision) is the contract a Keras layer is
held to, so the tests take it from here.
"""

from keras.src.testing import TestCase

__all__ = ["TestCase"]
