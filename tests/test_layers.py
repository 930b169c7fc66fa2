"""LocallyConnected1D/2D/3D as Keras layers: values, shapes, errors, Keras behaviour."""

import math
import re
import warnings

import keras
import numpy as np
import pytest
from packaging.version import Version

from keras_localconn import (
    LocallyConnected1D,
    LocallyConnected2D,
    LocallyConnected2DTranspose,
    LocallyConnected3D,
)
from tests.autodiff import to_numpy
from tests.helpers import (
    LOCALLY_CONNECTED,
    batch_shape,
    random_array,
    randomize_weights,
)
from tests.reference import reference_local_conv

SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 4, 4)}


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=2, strides=2, padding="same"),
        dict(kernel_size=2, dilation_rate=2, padding="same"),
    ],
    ids=["valid", "strided-same", "dilated-same"],
)
def test_layer_output_equals_reference_with_per_position_bias(
    rank, data_format, kwargs
):
    layer = LOCALLY_CONNECTED[rank](
        5, data_format=data_format, activation="relu", **kwargs
    )
    x = random_array(batch_shape(2, SPATIAL[rank], 3, data_format))
    layer.build(x.shape)
    randomize_weights(layer)
    kernel, bias = (to_numpy(w) for w in layer.weights)
    y = to_numpy(layer(x))
    expected = reference_local_conv(
        x,
        kernel,
        layer.kernel_size,
        layer.strides,
        layer.dilation_rate,
        layer.padding,
        data_format,
        bias=bias,
    )
    np.testing.assert_allclose(y, np.maximum(expected, 0), rtol=2e-5, atol=2e-5)


def test_bias_is_indexed_by_output_position_then_filter_in_both_formats():
    for data_format in ("channels_last", "channels_first"):
        layer = LocallyConnected2D(3, 1, data_format=data_format)
        shape = (1, 2, 4, 5) if data_format == "channels_first" else (1, 4, 5, 2)
        layer.build(shape)
        bias = np.arange(4 * 5 * 3, dtype="float32").reshape(4, 5, 3)
        layer.set_weights([np.zeros((20, 2, 3), "float32"), bias])
        y = to_numpy(layer(np.zeros(shape, "float32")))[0]
        if data_format == "channels_first":
            y = np.moveaxis(y, 0, -1)
        np.testing.assert_array_equal(y, bias)


def test_kernel_and_bias_have_the_documented_shapes():
    layer = LocallyConnected2D(64, (3, 3))
    layer.build((None, 32, 32, 3))
    assert tuple(layer.kernel.shape) == (900, 27, 64)
    assert tuple(layer.bias.shape) == (30, 30, 64)
    assert layer.count_params() == 30 * 30 * (3 * 3 * 3 * 64) + 30 * 30 * 64


def test_default_initializer_scales_each_position_like_a_convolution():
    layer = LocallyConnected2D(16, 3, kernel_initializer="glorot_uniform")
    layer.build((None, 34, 34, 8))
    kernel = to_numpy(layer.kernel)
    limit = math.sqrt(6.0 / (3 * 3 * 8 + 16))  # fan_in = K, fan_out = filters
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.9 * limit
    np.testing.assert_allclose(kernel.std(), limit / math.sqrt(3), rtol=0.02)


def test_positional_arguments_follow_keras_2_order():
    layer = LocallyConnected2D(4, 3, 2, "same", "channels_last", "relu", False)
    assert layer.strides == (2, 2)
    assert layer.padding == "same"
    assert layer.activation is keras.activations.relu
    assert layer.use_bias is False


# --------------------------------------------------------------------------
# Shapes and models
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, input_shape, expected",
    [
        (LocallyConnected1D(64, 3), (10, 32), (None, 8, 64)),
        (
            LocallyConnected1D(8, 3, padding="causal", dilation_rate=2),
            (10, 4),
            (None, 10, 8),
        ),
        (LocallyConnected1D(8, 4, strides=3, padding="same"), (10, 4), (None, 4, 8)),
        (LocallyConnected2D(64, (3, 3)), (32, 32, 3), (None, 30, 30, 64)),
        (
            LocallyConnected2D(6, (3, 2), strides=(2, 1), data_format="channels_first"),
            (3, 9, 8),
            (None, 6, 4, 7),
        ),
        (
            LocallyConnected3D(4, 3, padding="same", strides=2),
            (5, 6, 7, 2),
            (None, 3, 3, 4, 4),
        ),
    ],
)
def test_symbolic_output_shape_with_unknown_batch(layer, input_shape, expected):
    outputs = layer(keras.Input(input_shape))
    assert tuple(outputs.shape) == expected
    assert layer.compute_output_shape((None, *input_shape)) == expected
    y = layer(random_array((3, *input_shape)))
    assert tuple(y.shape) == (3, *expected[1:])


def test_sequential_functional_and_subclassed_models_agree():
    x = random_array((4, 8, 8, 3))
    lc1 = LocallyConnected2D(4, 3, activation="relu", name="lc1")
    lc2 = LocallyConnected2D(2, 2, strides=2, name="lc2")
    sequential = keras.Sequential([keras.Input((8, 8, 3)), lc1, lc2])
    inputs = keras.Input((8, 8, 3))
    functional = keras.Model(inputs, lc2(lc1(inputs)))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.first, self.second = lc1, lc2

        def call(self, inputs):
            return self.second(self.first(inputs))

    subclassed = Subclassed()
    expected = to_numpy(lc2(lc1(x)))
    assert expected.shape == (4, 3, 3, 2)
    for model in (sequential, functional, subclassed):
        np.testing.assert_allclose(
            model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6
        )


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: LocallyConnected2D(0, 3),
            r"LocallyConnected2D '.*': `filters`.*filters=0",
        ),
        (lambda: LocallyConnected2D(4.0, 3), r"`filters` must be a positive integer"),
        (lambda: LocallyConnected2D(4, (3, 0)), r"`kernel_size`.*positive.*\(3, 0\)"),
        (lambda: LocallyConnected1D(4, (3, 3)), r"`kernel_size` must have 1 element"),
        (lambda: LocallyConnected2D(4, 3, strides=-1), r"`strides`.*strides=-1"),
        (lambda: LocallyConnected2D(4, 3, dilation_rate=0), r"`dilation_rate`"),
        (
            lambda: LocallyConnected2D(4, 3, strides=(2, 1), dilation_rate=(2, 1)),
            r"`strides` > 1 is not compatible with `dilation_rate` > 1.*axis 0",
        ),
        (lambda: LocallyConnected2D(4, 3, padding="causal"), r"padding=.causal."),
        (
            lambda: LocallyConnected1D(4, 3, padding="full"),
            r"'valid', 'same', 'causal'",
        ),
        (lambda: LocallyConnected2D(4, 3, data_format="NHWC"), r"data_format='NHWC'"),
        (lambda: LocallyConnected2D(4, 3, implementation=4), r"implementation=4"),
    ],
)
def test_bad_constructor_arguments_are_value_errors_naming_layer_and_value(
    make, message
):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_spatial_dimensions_are_a_value_error_naming_layer_and_shape():
    layer = LocallyConnected2D(4, 3, name="faces")
    with pytest.raises(ValueError, match=r"'faces'.*\(None, None, None, 3\)"):
        layer(keras.Input((None, None, 3)))


def test_non_positive_output_dimension_is_a_value_error_naming_the_dimension():
    layer = LocallyConnected2D(4, (3, 7))
    with pytest.raises(
        ValueError, match=r"spatial dimension 1 of the output would be -1"
    ):
        layer.build((None, 8, 5, 3))


def test_input_of_wrong_rank_is_a_value_error():
    layer = LocallyConnected2D(4, 3)
    with pytest.raises(ValueError, match=r"expected ndim=4, found ndim=3"):
        layer(np.zeros((2, 8, 3), "float32"))
    with pytest.raises(ValueError, match=r"rank 4.*\(2, 8, 3\)"):
        LocallyConnected2D(4, 3).build((2, 8, 3))


def test_call_with_other_channel_count_than_built_is_a_value_error():
    layer = LocallyConnected2D(4, 3)
    layer(np.zeros((1, 5, 5, 3), "float32"))
    with pytest.raises(ValueError, match=r"axis -1 of input shape to have value 3"):
        layer(np.zeros((1, 5, 5, 2), "float32"))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("transposed", [False, True], ids=["forward", "transposed"])
def test_call_on_other_spatial_shape_than_built_names_the_axis_and_sizes(
    data_format, transposed
):
    """The built spatial shape is part of the layer's `InputSpec`."""
    layer_class = LocallyConnected2DTranspose if transposed else LocallyConnected2D
    layer = layer_class(4, 3, data_format=data_format, name="faces")
    built, other = (1, 5, 5, 3), (1, 6, 5, 3)
    if data_format == "channels_first":
        built, other = (1, 3, 5, 5), (1, 3, 6, 5)
    layer(np.zeros(built, "float32"))
    axis = 1 if data_format == "channels_last" else 2
    with pytest.raises(
        ValueError,
        # Keras 3.15 quotes the layer's name with ', Keras 3.10 with ".
        match=rf"layer ['\"]faces['\"].*expected axis {axis} of input shape to have "
        rf"value 5.*{re.escape(str(other))}",
    ):
        layer(np.zeros(other, "float32"))


def test_implementation_other_than_1_warns_once_per_call_site_and_changes_nothing():
    x = random_array((2, 6, 6, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        layers = [LocallyConnected2D(4, 3, implementation=n) for n in (2, 2, 3)]
        LocallyConnected2D(4, 3, implementation=1)
    messages = [str(w.message) for w in caught if w.category is UserWarning]
    # One line of code, two values asked for: one warning each.
    assert len(messages) == 2, messages
    assert "implementation=2" in messages[0] and "no effect" in messages[0]
    assert "implementation=3" in messages[1]
    reference = LocallyConnected2D(4, 3, implementation=1)
    reference.build(x.shape)
    for layer in layers:
        layer.build(x.shape)
        layer.set_weights(reference.get_weights())
        assert layer.implementation in (2, 3)
        np.testing.assert_allclose(to_numpy(layer(x)), to_numpy(reference(x)))


def test_numpy_integers_are_accepted_for_filters_and_kernel_size():
    layer = LocallyConnected2D(np.int64(4), np.int32(3), strides=np.int64(1))
    assert layer.filters == 4 and type(layer.filters) is int
    assert layer.kernel_size == (3, 3)
    assert layer.compute_output_shape((None, 5, 5, 2)) == (None, 3, 3, 4)
    assert layer.get_config()["filters"] == 4


@pytest.mark.parametrize(
    "layer, input_shape, kernel_shape, positions",
    [
        # (1022 * 1022, 3 * 3 * 64, 512) float32: 1.23 TB, more than any machine
        # here has (host RAM or device memory).
        (
            LocallyConnected2D(512, 3, name="huge"),
            (1024, 1024, 64),
            "(1044484, 576, 512)",
            "1044484 output positions",
        ),
        (
            LocallyConnected2DTranspose(64, 3, name="huge"),
            (1024, 1024, 512),
            "(1048576, 576, 512)",
            "1048576 input positions",
        ),
    ],
    ids=["forward", "transposed"],
)
def test_kernel_too_large_for_the_device_is_a_clear_error_and_nothing_is_built(
    layer, input_shape, kernel_shape, positions
):
    """More than any machine here holds: the allocation fails, on every backend,
    and the layer says so, with the sizes and what to do."""
    with pytest.raises(ValueError) as info:
        layer(keras.Input(input_shape))
    message = str(info.value)
    for part in (
        "'huge'",
        kernel_shape,
        "(1.23 TB) of float32" if "1044484" in kernel_shape else "(1.24 TB) of float32",
        "could not be allocated",
        positions,
        "`strides`",
        "smaller input",
        "positions_layout_map",
        "Conv2D",
    ):
        assert part in message, part
    assert not layer.built and not layer.weights


def test_out_of_memory_is_told_from_other_build_errors():
    """Only allocation failures become the kernel-size error; any other error
    of the kernel's initializer reaches the user unchanged."""

    def broken(shape, dtype=None):
        raise RuntimeError("initializer bug")

    layer = LocallyConnected2D(4, 3, kernel_initializer=broken)
    with pytest.raises(RuntimeError, match="initializer bug"):
        layer.build((None, 5, 5, 2))
    assert not layer.weights


# --------------------------------------------------------------------------
# Keras behaviour
# --------------------------------------------------------------------------


def test_config_round_trip_rebuilds_an_identical_layer():
    layer = LocallyConnected2D(
        8,
        (3, 2),
        strides=(1, 2),
        padding="SAME",
        data_format="channels_first",
        activation="tanh",
        use_bias=True,
        kernel_initializer=keras.initializers.HeNormal(seed=3),
        bias_initializer="ones",
        kernel_regularizer=keras.regularizers.L1L2(l1=0.01, l2=0.02),
        bias_regularizer="l2",
        activity_regularizer=keras.regularizers.L1(0.5),
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        bias_constraint="non_neg",
        implementation=2,
        name="lc",
        dtype="float64",
        trainable=False,
    )
    config = layer.get_config()
    rebuilt = LocallyConnected2D.from_config(config)
    assert rebuilt.get_config() == config
    assert config["padding"] == "same" and config["implementation"] == 2
    assert config["kernel_regularizer"]["config"] == {"l1": 0.01, "l2": 0.02}
    assert rebuilt.dtype == "float64" and rebuilt.trainable is False
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "keras_localconn>LocallyConnected2D"
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is LocallyConnected2D and again.get_config() == config


def test_model_with_both_layers_saves_and_loads_with_safe_mode(tmp_path):
    inputs = keras.Input((12, 10, 3))
    hidden = LocallyConnected2D(4, 3, strides=2, activation="relu")(inputs)
    hidden = keras.layers.Reshape((5 * 4, 4))(hidden)
    outputs = LocallyConnected1D(2, 3, padding="causal")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    x = random_array((3, 12, 10, 3))
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [type(layer).__name__ for layer in loaded.layers[1:]] == [
        "LocallyConnected2D",
        "Reshape",
        "LocallyConnected1D",
    ]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6)


def test_regularization_losses_count_kernel_bias_then_activity():
    layer = LocallyConnected1D(
        2,
        3,
        kernel_regularizer="l2",
        bias_regularizer="l2",
        activity_regularizer=keras.regularizers.L1(1.0),
    )
    layer.build((None, 6, 2))
    assert len(layer.losses) == 2
    randomize_weights(layer)
    x = random_array((2, 6, 2))
    y = to_numpy(layer(x))
    assert len(layer.losses) == 3
    kernel, bias = (to_numpy(w) for w in layer.weights)
    values = sorted(float(to_numpy(v)) for v in layer.losses)
    # Keras' own convention for activity losses (recent releases divide by
    # the batch size, older ones did not), read from a layer of its own.
    keras_activity = keras.layers.Activation(
        "linear", activity_regularizer=keras.regularizers.L1(1.0)
    )
    keras_activity(y)
    expected = sorted(
        [
            0.01 * float(np.sum(kernel**2)),
            0.01 * float(np.sum(bias**2)),
            float(to_numpy(keras_activity.losses[0])),
        ]
    )
    assert expected[2] > 0
    np.testing.assert_allclose(values, expected, rtol=1e-4)


def _teacher_task(seed=0):
    """Targets from a random locally connected teacher: a learnable task."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(128, 10, 3)).astype("float32")
    kernel = rng.normal(size=(8, 9, 2)).astype("float32")
    y = reference_local_conv(x, kernel, (3,), (1,), (1,), "valid", "channels_last")
    return x, y.astype("float32")


@pytest.mark.training
def test_fit_lowers_the_loss_on_a_learnable_task():
    keras.utils.set_random_seed(0)
    x, y = _teacher_task()
    model = keras.Sequential([keras.Input((10, 3)), LocallyConnected1D(2, 3)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < 0.05 * before


@pytest.mark.training
def test_constraints_are_applied_during_fit():
    keras.utils.set_random_seed(0)
    x, y = _teacher_task()
    layer = LocallyConnected1D(
        2,
        3,
        kernel_constraint="non_neg",
        bias_constraint=keras.constraints.MaxNorm(0.1),
    )
    model = keras.Sequential([keras.Input((10, 3)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    kernel = to_numpy(layer.kernel)
    assert kernel.min() >= 0.0
    assert np.count_nonzero(kernel == 0.0) > 0  # the constraint clipped something
    norms = np.sqrt(np.sum(to_numpy(layer.bias) ** 2, axis=0))
    assert norms.max() <= 0.1 + 1e-6


def test_quantize_works_from_keras_3_13_and_is_refused_clearly_before():
    """Keras 3.13 brought the quantization configs these layers follow: there
    `quantize` works; before, it raises the NotImplementedError that
    `Model.quantize` turns into a warning, naming the Keras it needs. The
    version, not the package's own feature test, says which is expected."""
    layer = LocallyConnected2D(3, 2, name="q")
    layer.build((None, 5, 5, 2))
    if Version(keras.__version__) >= Version("3.13"):
        layer.quantize("int8")
        assert layer.quantization_mode == "int8"
    else:
        with pytest.raises(NotImplementedError, match=r"'q'.*Keras >= 3.13"):
            layer.quantize("int8")
        assert layer.quantization_mode is None
