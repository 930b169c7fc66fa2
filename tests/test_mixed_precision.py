"""Dtype policies: mixed_float16 and mixed_bfloat16 for both layer families.

Every Keras backend computes both policies on the CPU (torch's matmul runs
float16 in float32 there and casts back), so these run on all of them; the
numpy backend runs the forward tests only.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_localconn import (
    LocallyConnected1D,
    LocallyConnected1DTranspose,
    LocallyConnected2D,
    LocallyConnected2DTranspose,
    LocallyConnected3D,
    LocallyConnected3DTranspose,
)
from keras_localconn.ops import local_conv
from tests.autodiff import to_numpy
from tests.helpers import random_array

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")

# Worst |low precision - float32| relative to the largest |float32 output|:
# float16 keeps 11 significant bits, bfloat16 8; the sums here have <= 54
# terms. Measured worst cases are 5 to 10 times below these bounds.
RELATIVE_TOLERANCE = {"float16": 5e-3, "bfloat16": 3e-2}

LAYER_CASES = [
    pytest.param(LocallyConnected1D, (9, 3), {"padding": "causal"}, id="1d-causal"),
    pytest.param(LocallyConnected2D, (6, 5, 3), {}, id="2d"),
    pytest.param(
        LocallyConnected2D,
        (3, 6, 5),
        {"data_format": "channels_first", "strides": 2},
        id="2d-channels-first",
    ),
    pytest.param(LocallyConnected3D, (4, 5, 4, 2), {"padding": "same"}, id="3d"),
    pytest.param(
        LocallyConnected1DTranspose,
        (5, 3),
        {"strides": 2, "padding": "same"},
        id="1d-transpose",
    ),
    pytest.param(
        LocallyConnected2DTranspose,
        (4, 3, 3),
        {"strides": 2, "padding": "same"},
        id="2d-transpose",
    ),
    pytest.param(
        LocallyConnected3DTranspose,
        (3, 2, 2, 3),
        {"strides": 2, "padding": "same"},
        id="3d-transpose",
    ),
]


def _cases(*ids):
    """The LAYER_CASES with these ids: one per rank is enough for training."""
    return [case for case in LAYER_CASES if case.id in ids]


@pytest.fixture
def global_policy(request):
    """Sets `request.param` as the global dtype policy, restored afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.config.set_dtype_policy(previous)


def _inputs(input_shape, seed=0):
    return random_array((4, *input_shape), seed)


def _float32_twin(layer, input_shape):
    """A float32 layer with `layer`'s configuration and weights."""
    config = layer.get_config()
    config["dtype"] = "float32"
    twin = type(layer).from_config(config)
    twin.build((None, *input_shape))
    twin.set_weights(layer.get_weights())
    return twin


def _as_float32_numpy(x):
    return ops.convert_to_numpy(ops.cast(x, "float32"))


def _assert_close_to_float32(outputs, expected, compute_dtype):
    outputs, expected = _as_float32_numpy(outputs), _as_float32_numpy(expected)
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(outputs - expected).max())
    assert error <= RELATIVE_TOLERANCE[compute_dtype] * scale, (error, scale)


@pytest.mark.parametrize("policy", MIXED_POLICIES)
@pytest.mark.parametrize(("layer_class", "input_shape", "kwargs"), LAYER_CASES)
def test_mixed_policy_argument_keeps_float32_variables_and_low_precision_outputs(
    layer_class, input_shape, kwargs, policy
):
    layer = layer_class(4, 3, dtype=policy, bias_initializer="normal", **kwargs)
    outputs = layer(_inputs(input_shape))
    compute_dtype = policy.removeprefix("mixed_")

    assert layer.dtype_policy.name == policy
    assert layer.compute_dtype == compute_dtype
    assert [keras.backend.standardize_dtype(w.dtype) for w in layer.weights] == [
        "float32",
        "float32",
    ]
    assert keras.backend.standardize_dtype(outputs.dtype) == compute_dtype
    assert tuple(outputs.shape) == layer.compute_output_shape((4, *input_shape))


@pytest.mark.parametrize("policy", MIXED_POLICIES)
@pytest.mark.parametrize(("layer_class", "input_shape", "kwargs"), LAYER_CASES)
def test_mixed_policy_outputs_match_float32_layer_with_the_same_weights(
    layer_class, input_shape, kwargs, policy
):
    layer = layer_class(4, 3, dtype=policy, bias_initializer="normal", **kwargs)
    x = _inputs(input_shape)
    outputs = layer(x)
    expected = _float32_twin(layer, input_shape)(x)

    _assert_close_to_float32(outputs, expected, policy.removeprefix("mixed_"))
    # The low precision really was used: the results are not bit-identical.
    assert not np.array_equal(_as_float32_numpy(outputs), _as_float32_numpy(expected))


@pytest.mark.parametrize("global_policy", MIXED_POLICIES, indirect=True)
@pytest.mark.parametrize(("layer_class", "input_shape", "kwargs"), LAYER_CASES)
def test_global_mixed_policy_applies_to_layers_in_a_model(
    layer_class, input_shape, kwargs, global_policy
):
    compute_dtype = global_policy.removeprefix("mixed_")
    layer = layer_class(4, 3, bias_initializer="normal", **kwargs)
    model = keras.Sequential([keras.Input(input_shape), layer])
    x = _inputs(input_shape)
    outputs = model(x)
    predictions = model.predict(x, verbose=0)

    assert layer.dtype_policy.name == global_policy
    assert {keras.backend.standardize_dtype(w.dtype) for w in layer.weights} == {
        "float32"
    }
    assert keras.backend.standardize_dtype(outputs.dtype) == compute_dtype
    expected = _float32_twin(layer, input_shape)(x)
    _assert_close_to_float32(outputs, expected, compute_dtype)
    _assert_close_to_float32(predictions, expected, compute_dtype)


def _regression_data(input_shape):
    x = _inputs(input_shape, seed=1)
    y = np.tanh(x.reshape(len(x), -1).sum(axis=1, keepdims=True) / 4)
    return x, y.astype("float32")


def _train(model, x, y, steps):
    model.compile(optimizer=keras.optimizers.SGD(0.005), loss="mse")
    initial_loss = float(model.evaluate(x, y, verbose=0))
    history = model.fit(x, y, batch_size=len(x), epochs=steps, verbose=0)
    final_loss = float(model.evaluate(x, y, verbose=0))
    return initial_loss, history.history["loss"], final_loss


@pytest.mark.training
@pytest.mark.parametrize("policy", MIXED_POLICIES)
@pytest.mark.parametrize(
    ("layer_class", "input_shape", "kwargs"),
    _cases("1d-causal", "2d-channels-first", "3d"),
)
def test_training_steps_with_mixed_policy_layer_reduce_the_loss(
    layer_class, input_shape, kwargs, policy
):
    keras.utils.set_random_seed(0)
    layer = layer_class(4, 3, dtype=policy, activation="tanh", **kwargs)
    model = keras.Sequential(
        [
            keras.Input(input_shape),
            layer,
            keras.layers.Flatten(dtype=policy),
            # The usual mixed precision recipe: a float32 output layer.
            keras.layers.Dense(1, dtype="float32"),
        ]
    )
    kernel_before = ops.convert_to_numpy(layer.kernel)
    initial_loss, losses, final_loss = _train(model, *_regression_data(input_shape), 5)

    assert np.all(np.isfinite(losses))
    assert final_loss < initial_loss
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"
    assert not np.array_equal(ops.convert_to_numpy(layer.kernel), kernel_before)


@pytest.mark.training
@pytest.mark.parametrize("global_policy", MIXED_POLICIES, indirect=True)
@pytest.mark.parametrize(
    ("layer_class", "input_shape", "kwargs"),
    _cases("1d-causal", "2d", "3d"),
)
def test_training_steps_under_global_mixed_policy_reduce_the_loss(
    layer_class, input_shape, kwargs, global_policy
):
    keras.utils.set_random_seed(0)
    layer = layer_class(4, 3, activation="tanh", **kwargs)
    model = keras.Sequential(
        [
            keras.Input(input_shape),
            layer,
            keras.layers.Flatten(),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )
    initial_loss, losses, final_loss = _train(model, *_regression_data(input_shape), 5)

    # Keras wraps the optimizer in a LossScaleOptimizer for mixed_float16.
    wrapped = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert wrapped == (global_policy == "mixed_float16")
    assert np.all(np.isfinite(losses))
    assert final_loss < initial_loss
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"


@pytest.mark.training
@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_training_steps_with_mixed_policy_transpose_layer_use_float32_gradients(
    policy,
):
    keras.utils.set_random_seed(0)
    layer = LocallyConnected2DTranspose(2, 3, strides=2, padding="same", dtype=policy)
    model = keras.Sequential([keras.Input((3, 3, 2)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, target = random_array((16, 3, 3, 2)), random_array((16, 6, 6, 2), seed=1)
    before = to_numpy(layer.kernel).copy()
    history = model.fit(x, target, epochs=3, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"
    assert not np.array_equal(to_numpy(layer.kernel), before)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_local_conv_keeps_the_low_precision_dtype_of_its_operands(dtype):
    x = _inputs((7, 3))
    kernel = np.random.default_rng(2).normal(size=(5, 9, 2)).astype("float32")
    outputs = local_conv(ops.cast(x, dtype), ops.cast(kernel, dtype), 3)
    expected = local_conv(x, kernel, 3)

    assert keras.backend.standardize_dtype(outputs.dtype) == dtype
    _assert_close_to_float32(outputs, expected, dtype)


@pytest.mark.parametrize("operand", ["inputs", "kernel"])
def test_local_conv_refuses_boolean_operands_with_a_value_error(operand):
    # Backends would return a logical or-of-ands instead of a convolution.
    operands = {
        "inputs": ops.ones((2, 7, 3), dtype="float32"),
        "kernel": ops.ones((5, 9, 2), dtype="float32"),
    }
    operands[operand] = ops.cast(operands[operand], "bool")
    with pytest.raises(ValueError, match=f"`{operand}` must have a numeric dtype"):
        local_conv(operands["inputs"], operands["kernel"], 3)
