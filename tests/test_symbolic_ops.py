"""`ops.local_conv` and `ops.local_conv_transpose` on symbolic tensors.

As `keras.ops.conv` does, each op called on `keras.Input`s is one
`keras.Operation` node of the functional graph, whose output spec comes from
the same checks and shape arithmetic as the computation.
"""

import keras
import numpy as np
import pytest

from keras_localconn import ops
from tests.autodiff import to_numpy
from tests.reference import reference_local_conv
from tests.reference_transpose import reference_local_conv_transpose


def _operations(model):
    return [
        op for op in model.operations if not isinstance(op, keras.layers.InputLayer)
    ]


def test_local_conv_on_keras_inputs_is_one_node_with_the_computed_values():
    x = keras.Input((7, 3), batch_size=2)
    kernel = keras.Input((9, 4), batch_size=5)  # (P, K, filters)
    y = ops.local_conv(x, kernel, 3, padding="valid")
    assert tuple(y.shape) == (2, 5, 4) and y.dtype == "float32"
    model = keras.Model([x, kernel], y)
    (operation,) = _operations(model)
    assert isinstance(operation, ops.LocalConv)
    rng = np.random.default_rng(0)
    x_value = rng.normal(size=(2, 7, 3)).astype("float32")
    k_value = rng.normal(size=(5, 9, 4)).astype("float32")
    expected = reference_local_conv(
        x_value, k_value, (3,), (1,), (1,), "valid", "channels_last"
    )
    # predict would batch the kernel too: call the graph once, whole.
    np.testing.assert_allclose(
        to_numpy(model([x_value, k_value])), expected, rtol=2e-5, atol=2e-5
    )


def test_local_conv_transpose_on_keras_inputs_is_one_node_with_the_computed_values():
    y = keras.Input((4, 3), batch_size=2)  # channels_first: 4 channels, length 3
    kernel = keras.Input((2 * 5, 4), batch_size=3)  # (P in, K = taps * filters, C)
    x = ops.local_conv_transpose(y, kernel, 2, strides=2, data_format="channels_first")
    assert tuple(x.shape) == (2, 5, 6)
    model = keras.Model([y, kernel], x)
    (operation,) = _operations(model)
    assert isinstance(operation, ops.LocalConvTranspose)
    rng = np.random.default_rng(1)
    y_value = rng.normal(size=(2, 4, 3)).astype("float32")
    k_value = rng.normal(size=(3, 10, 4)).astype("float32")
    expected = reference_local_conv_transpose(
        y_value, k_value, (2,), (2,), (1,), "valid", None, "channels_first"
    )
    np.testing.assert_allclose(
        to_numpy(model([y_value, k_value])), expected, rtol=2e-5, atol=2e-5
    )


def test_a_symbolic_call_checks_its_arguments_as_the_computation_does():
    x = keras.Input((7, 3))
    with pytest.raises(ValueError, match=r"local_conv: `kernel` must have shape"):
        ops.local_conv(x, keras.Input((8, 4), batch_size=5), 3)
    with pytest.raises(ValueError, match=r"local_conv: `padding` must be one of"):
        ops.local_conv(x, keras.Input((9, 4), batch_size=5), 3, padding="full")


def test_a_local_conv_node_configures_itself_and_rebuilds_from_its_config():
    """Every argument is a named attribute: Keras' automatic config holds
    them, an array map as nested lists, and `from_config` rebuilds a node
    that computes the same values."""
    x = keras.Input((6, 3), batch_size=2)
    kernel = keras.Input((9, 4), batch_size=2)  # two groups
    groups = np.array([0, 0, 1, 1, 1, 0])
    y = ops.local_conv(x, kernel, 3, padding="same", position_groups=groups)
    (operation,) = _operations(keras.Model([x, kernel], y))
    config = operation.get_config()
    assert config == {
        "name": operation.name,
        "kernel_size": 3,
        "strides": 1,
        "padding": "same",
        "dilation_rate": 1,
        "data_format": None,
        "position_groups": [0, 0, 1, 1, 1, 0],
    }
    rebuilt = ops.LocalConv.from_config(config)
    assert rebuilt.get_config() == config
    rng = np.random.default_rng(2)
    x_value = rng.normal(size=(2, 6, 3)).astype("float32")
    k_value = rng.normal(size=(2, 9, 4)).astype("float32")
    expected = reference_local_conv(
        x_value, k_value[groups], (3,), (1,), (1,), "same", "channels_last"
    )
    np.testing.assert_allclose(
        to_numpy(rebuilt(x_value, k_value)), expected, rtol=2e-5, atol=2e-5
    )
    symbolic = rebuilt(x, kernel)
    assert tuple(symbolic.shape) == (2, 6, 4)


def test_a_local_conv_transpose_node_configures_itself_and_rebuilds_from_its_config():
    operation = ops.LocalConvTranspose(
        2, strides=2, output_padding=1, data_format="channels_first", name="up"
    )
    config = operation.get_config()
    assert config == {
        "name": "up",
        "kernel_size": 2,
        "strides": 2,
        "padding": "valid",
        "output_padding": 1,
        "dilation_rate": 1,
        "data_format": "channels_first",
    }
    rebuilt = ops.LocalConvTranspose.from_config(config)
    assert rebuilt.name == "up" and rebuilt.get_config() == config
    y = keras.Input((4, 3), batch_size=2)  # 4 channels, length 3
    kernel = keras.Input((2 * 5, 4), batch_size=3)
    assert tuple(rebuilt(y, kernel).shape) == (2, 5, 7)
    rng = np.random.default_rng(3)
    y_value = rng.normal(size=(2, 4, 3)).astype("float32")
    k_value = rng.normal(size=(3, 10, 4)).astype("float32")
    expected = reference_local_conv_transpose(
        y_value, k_value, (2,), (2,), (1,), "valid", (1,), "channels_first"
    )
    np.testing.assert_allclose(
        to_numpy(rebuilt(y_value, k_value)), expected, rtol=2e-5, atol=2e-5
    )
