"""LocallyConnected1D/2D/3DTranspose as Keras layers."""

import math

import keras
import numpy as np
import pytest

from keras_localconn import (
    LocallyConnected1DTranspose,
    LocallyConnected2D,
    LocallyConnected2DTranspose,
    LocallyConnected3DTranspose,
)
from keras_localconn.layers import BaseLocallyConnected
from tests.autodiff import to_numpy
from tests.helpers import (
    CONV_TRANSPOSE,
    LOCALLY_CONNECTED,
    LOCALLY_CONNECTED_TRANSPOSE,
    batch_shape,
    random_array,
    randomize_weights,
)
from tests.reference_transpose import (
    reference_local_conv_transpose,
)

SPATIAL = {1: (5,), 2: (4, 3), 3: (3, 2, 2)}


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=3, strides=2, padding="same"),
        dict(kernel_size=2, strides=2, output_padding=1),
        dict(kernel_size=2, dilation_rate=2, padding="same"),
    ],
    ids=["valid", "strided-same", "output-padding", "dilated-same"],
)
def test_layer_output_equals_reference_with_per_position_bias(
    rank, data_format, kwargs
):
    layer = LOCALLY_CONNECTED_TRANSPOSE[rank](
        4, data_format=data_format, activation="relu", **kwargs
    )
    y = random_array(batch_shape(2, SPATIAL[rank], 3, data_format))
    layer.build(y.shape)
    randomize_weights(layer)
    kernel, bias = (to_numpy(w) for w in layer.weights)
    x = to_numpy(layer(y))
    expected = reference_local_conv_transpose(
        y,
        kernel,
        layer.kernel_size,
        layer.strides,
        layer.dilation_rate,
        layer.padding,
        layer.output_padding,
        data_format,
        bias=bias,
    )
    np.testing.assert_allclose(x, np.maximum(expected, 0), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_shared_weights_equal_keras_conv_transpose_with_bias(rank):
    kwargs = dict(kernel_size=3, strides=2, padding="same", output_padding=1)
    ours = LOCALLY_CONNECTED_TRANSPOSE[rank](4, **kwargs)
    theirs = CONV_TRANSPOSE[rank](4, **kwargs)
    y = random_array(batch_shape(2, SPATIAL[rank], 3, "channels_last"))
    ours.build(y.shape)
    theirs.build(y.shape)
    conv_kernel = random_array(theirs.kernel.shape, seed=2)  # (*kernel, filters, in)
    conv_bias = random_array((4,), seed=3)
    theirs.set_weights([conv_kernel, conv_bias])
    positions = ours.kernel.shape[0]
    ours.set_weights(
        [
            np.broadcast_to(conv_kernel.reshape(-1, y.shape[-1]), ours.kernel.shape),
            np.broadcast_to(conv_bias, ours.bias.shape),
        ]
    )
    assert positions == math.prod(SPATIAL[rank])
    np.testing.assert_allclose(
        to_numpy(ours(y)), to_numpy(theirs(y)), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_is_the_adjoint_of_the_forward_layer_with_the_same_kernel(rank, data_format):
    """The decoder of `LocallyConnected{N}D(strides=2, padding="same")`."""
    channels, filters = 3, 4
    decoder = LOCALLY_CONNECTED_TRANSPOSE[rank](
        filters, 3, strides=2, padding="same", data_format=data_format, use_bias=False
    )
    y = random_array(batch_shape(2, SPATIAL[rank], channels, data_format))
    x_shape = decoder.compute_output_shape(y.shape)
    encoder = LOCALLY_CONNECTED[rank](
        channels, 3, strides=2, padding="same", data_format=data_format, use_bias=False
    )
    encoder.build(x_shape)
    decoder.build(y.shape)
    assert tuple(encoder.kernel.shape) == tuple(decoder.kernel.shape)
    kernel = random_array(encoder.kernel.shape, seed=4)
    encoder.set_weights([kernel])
    decoder.set_weights([kernel])
    x = random_array(x_shape, seed=5)
    assert encoder.compute_output_shape(x_shape) == y.shape
    np.testing.assert_allclose(
        np.sum(to_numpy(decoder(y)).astype(np.float64) * x),
        np.sum(y.astype(np.float64) * to_numpy(encoder(x))),
        rtol=1e-4,
    )


def test_bias_is_indexed_by_output_position_then_filter_in_both_formats():
    for data_format in ("channels_last", "channels_first"):
        layer = LocallyConnected2DTranspose(3, 2, strides=2, data_format=data_format)
        shape = (1, 2, 2, 3) if data_format == "channels_first" else (1, 2, 3, 2)
        layer.build(shape)
        bias = np.arange(4 * 6 * 3, dtype="float32").reshape(4, 6, 3)
        layer.set_weights([np.zeros((6, 12, 2), "float32"), bias])
        x = to_numpy(layer(np.zeros(shape, "float32")))[0]
        if data_format == "channels_first":
            x = np.moveaxis(x, 0, -1)
        np.testing.assert_array_equal(x, bias)


def test_kernel_and_bias_have_the_documented_shapes():
    layer = LocallyConnected2DTranspose(3, 2, strides=2)
    layer.build((None, 8, 8, 16))
    assert tuple(layer.kernel.shape) == (64, 2 * 2 * 3, 16)
    assert tuple(layer.bias.shape) == (16, 16, 3)
    assert layer.count_params() == 64 * 12 * 16 + 16 * 16 * 3


def test_default_initializer_scales_each_position_like_a_convolution():
    layer = LocallyConnected2DTranspose(8, 3, kernel_initializer="glorot_uniform")
    layer.build((None, 20, 20, 16))
    kernel = to_numpy(layer.kernel)
    limit = math.sqrt(6.0 / (3 * 3 * 8 + 16))  # fan_in = K, fan_out = channels
    assert limit * 0.9 < np.abs(kernel).max() <= limit


def test_positional_arguments_follow_keras_conv_transpose_order():
    layer = LocallyConnected2DTranspose(
        4, 3, 2, "same", 1, "channels_last", 1, "relu", False
    )
    assert layer.strides == (2, 2) and layer.padding == "same"
    assert layer.output_padding == (1, 1)
    assert layer.activation is keras.activations.relu
    assert layer.use_bias is False


def test_is_not_taken_for_a_forward_layer():
    assert not isinstance(LocallyConnected2DTranspose(2, 2), BaseLocallyConnected)


# --------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rank, kwargs, input_shape",
    [
        (1, dict(kernel_size=3), (7, 2)),
        (1, dict(kernel_size=4, strides=3, padding="same"), (5, 2)),
        (1, dict(kernel_size=2, strides=3), (5, 2)),
        # Keras refuses a zero in `output_padding` before 3.11.
        pytest.param(
            2,
            dict(kernel_size=(3, 2), strides=(2, 1), output_padding=(1, 0)),
            (4, 5, 3),
            marks=pytest.mark.needs_keras("3.11.0"),
        ),
        (
            2,
            dict(
                kernel_size=3, strides=2, padding="same", data_format="channels_first"
            ),
            (3, 4, 5),
        ),
        (2, dict(kernel_size=3, dilation_rate=2), (4, 5, 3)),
        (
            3,
            dict(kernel_size=2, strides=2, padding="same", output_padding=1),
            (2, 3, 2, 2),
        ),
    ],
)
def test_symbolic_output_shape_equals_keras_conv_transpose(rank, kwargs, input_shape):
    layer = LOCALLY_CONNECTED_TRANSPOSE[rank](4, **kwargs)
    expected = tuple(
        CONV_TRANSPOSE[rank](4, **kwargs).compute_output_shape((None, *input_shape))
    )
    outputs = layer(keras.Input(input_shape))
    assert tuple(outputs.shape) == expected
    assert layer.compute_output_shape((None, *input_shape)) == expected
    assert tuple(layer(random_array((3, *input_shape))).shape) == (3, *expected[1:])


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: LocallyConnected2DTranspose(0, 3),
            r"LocallyConnected2DTranspose '.*': `filters`.*filters=0",
        ),
        (lambda: LocallyConnected2DTranspose(4, (3, 0)), r"`kernel_size`.*\(3, 0\)"),
        (
            lambda: LocallyConnected1DTranspose(4, (3, 3)),
            r"`kernel_size` must have 1 element",
        ),
        (
            lambda: LocallyConnected2DTranspose(4, 3, strides=(2, 1), dilation_rate=2),
            r"`strides` > 1 is not compatible with `dilation_rate` > 1.*axis 0",
        ),
        (
            lambda: LocallyConnected1DTranspose(4, 3, padding="causal"),
            r"no 'causal'.*padding='causal'",
        ),
        (
            lambda: LocallyConnected2DTranspose(4, 3, strides=2, output_padding=2),
            r"strictly less than the `strides`.*axis 0.*output_padding=2",
        ),
        (
            lambda: LocallyConnected3DTranspose(4, 3, output_padding=(0, 0)),
            r"`output_padding` must have 3 element",
        ),
        (
            lambda: LocallyConnected2DTranspose(4, 3, data_format="NCHW"),
            r"data_format='NCHW'",
        ),
    ],
)
def test_bad_constructor_arguments_are_value_errors_naming_layer_and_value(
    make, message
):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_spatial_dimensions_are_a_value_error_naming_layer_and_shape():
    layer = LocallyConnected2DTranspose(4, 3, name="decoder")
    with pytest.raises(ValueError, match=r"'decoder'.*\(None, None, None, 3\)"):
        layer(keras.Input((None, None, 3)))


def test_empty_output_is_a_value_error_naming_the_dimension():
    layer = LocallyConnected1DTranspose(
        4, 2, strides=2, padding="same", output_padding=0
    )
    with pytest.raises(
        ValueError, match=r"spatial dimension 0 of the output would be 0"
    ):
        layer.build((None, 1, 3))


def test_input_of_wrong_rank_or_channels_is_a_value_error():
    with pytest.raises(ValueError, match=r"rank 4.*\(2, 8, 3\)"):
        LocallyConnected2DTranspose(4, 3).build((2, 8, 3))
    layer = LocallyConnected2DTranspose(4, 3)
    layer(np.zeros((1, 3, 3, 3), "float32"))
    with pytest.raises(ValueError, match=r"axis -1 of input shape to have value 3"):
        layer(np.zeros((1, 3, 3, 2), "float32"))


# --------------------------------------------------------------------------
# Keras behaviour
# --------------------------------------------------------------------------


def test_config_round_trip_rebuilds_an_identical_layer():
    layer = LocallyConnected2DTranspose(
        8,
        (3, 2),
        strides=(2, 1),
        padding="SAME",
        output_padding=(1, 0),
        data_format="channels_first",
        dilation_rate=(1, 2),
        activation="tanh",
        kernel_initializer=keras.initializers.HeNormal(seed=3),
        bias_initializer="ones",
        kernel_regularizer=keras.regularizers.L1L2(l1=0.01, l2=0.02),
        bias_regularizer="l2",
        activity_regularizer=keras.regularizers.L1(0.5),
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        bias_constraint="non_neg",
        name="decoder",
        dtype="float64",
        trainable=False,
    )
    config = layer.get_config()
    rebuilt = LocallyConnected2DTranspose.from_config(config)
    assert rebuilt.get_config() == config
    assert config["padding"] == "same" and config["output_padding"] == (1, 0)
    assert "implementation" not in config
    assert rebuilt.dtype == "float64" and rebuilt.trainable is False
    serialized = keras.saving.serialize_keras_object(layer)
    assert (
        serialized["registered_name"] == "keras_localconn>LocallyConnected2DTranspose"
    )
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is LocallyConnected2DTranspose
    assert again.get_config() == config


def _encoder_decoder(input_shape=(8, 8, 1)):
    inputs = keras.Input(input_shape)
    code = LocallyConnected2D(4, 3, strides=2, padding="same", activation="relu")(
        inputs
    )
    outputs = LocallyConnected2DTranspose(1, 3, strides=2, padding="same")(code)
    return keras.Model(inputs, outputs)


def test_encoder_decoder_saves_and_loads_with_safe_mode(tmp_path):
    model = _encoder_decoder()
    x = random_array((3, 8, 8, 1))
    expected = model.predict(x, verbose=0)
    path = tmp_path / "autoencoder.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.layers[-1]) is LocallyConnected2DTranspose
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6)


@pytest.mark.training
def test_fit_lowers_the_reconstruction_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # Smooth random images: a learnable reconstruction.
    x = rng.normal(size=(64, 4, 4, 1)).repeat(2, axis=1).repeat(2, axis=2)
    x = x.astype("float32")
    model = _encoder_decoder()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    before = model.evaluate(x, x, verbose=0)
    model.fit(x, x, epochs=40, batch_size=16, verbose=0)
    assert model.evaluate(x, x, verbose=0) < 0.5 * before


@pytest.mark.training
def test_constraints_are_applied_during_fit():
    keras.utils.set_random_seed(0)
    layer = LocallyConnected1DTranspose(
        2, 3, strides=2, kernel_constraint="non_neg", bias_constraint="non_neg"
    )
    model = keras.Sequential([keras.Input((4, 3)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = random_array((32, 4, 3))
    model.fit(x, -np.abs(random_array((32, 9, 2), seed=1)), epochs=2, verbose=0)
    assert to_numpy(layer.kernel).min() >= 0.0
    assert to_numpy(layer.bias).min() >= 0.0
