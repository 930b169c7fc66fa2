"""`from_conv` / `to_conv`: the locally connected layer equals the convolution."""

import keras
import numpy as np
import pytest

import keras_localconn
from keras_localconn import (
    LocallyConnected1D,
    LocallyConnected2D,
    LocallyConnected2DTranspose,
    LocallyConnected3D,
    from_conv,
    to_conv,
    untie,
)
from tests.autodiff import to_numpy
from tests.helpers import (
    CONV_LAYER_CASES,
    batch_shape,
    conv_inputs,
    conv_layer_case_id,
    conv_outputs,
    random_array,
    trained_looking_conv,
)

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CONV_LAYER_CASES, ids=conv_layer_case_id)
def test_from_conv_outputs_equal_the_convolution(case, data_format):
    conv = trained_looking_conv(case, data_format, activation="tanh")
    local = from_conv(conv)
    assert isinstance(local, keras_localconn.layers.BaseLocallyConnected)
    assert local.rank == conv.rank and local.built
    x = conv_inputs(case, data_format)
    np.testing.assert_allclose(to_numpy(local(x)), conv_outputs(conv, x), **TOL)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CONV_LAYER_CASES, ids=conv_layer_case_id)
def test_to_conv_of_from_conv_gives_back_the_convolution(case, data_format):
    conv = trained_looking_conv(case, data_format)
    local = from_conv(conv)
    back = to_conv(local)
    assert type(back) is type(conv)
    assert back.get_config() == conv.get_config()
    for restored, original in zip(back.get_weights(), conv.get_weights()):
        np.testing.assert_allclose(restored, original, rtol=1e-6, atol=1e-6)
    x = conv_inputs(case, data_format)
    np.testing.assert_allclose(conv_outputs(back, x), to_numpy(local(x)), **TOL)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_to_conv_averages_kernel_and_bias_over_positions(data_format):
    local = LocallyConnected2D(3, (3, 2), data_format=data_format)
    local.build(batch_shape(None, (5, 4), 2, data_format))
    rng = np.random.default_rng(0)
    kernel, bias = (rng.normal(size=w.shape) for w in local.get_weights())
    local.set_weights([kernel, bias])
    conv = to_conv(local)
    mean = kernel.mean(axis=0)  # (K, filters)
    if data_format == "channels_last":  # K = (offsets..., channel)
        expected = mean.reshape(3, 2, 2, 3)
    else:  # K = (channel, offsets...)
        expected = np.moveaxis(mean.reshape(2, 3, 2, 3), 0, -2)
    np.testing.assert_allclose(to_numpy(conv.kernel), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(conv.bias), bias.reshape(-1, 3).mean(axis=0), rtol=1e-5, atol=1e-6
    )


def test_configuration_carries_over_both_ways():
    conv = keras.layers.Conv2D(
        5,
        (3, 1),
        strides=(1, 2),
        padding="same",
        data_format="channels_first",
        activation="relu",
        use_bias=False,
        kernel_initializer="he_normal",
        bias_initializer="ones",
        kernel_regularizer=keras.regularizers.L2(0.01),
        bias_regularizer=keras.regularizers.L1(0.02),
        activity_regularizer=keras.regularizers.L2(0.03),
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        bias_constraint=keras.constraints.NonNeg(),
        dtype="float64",
        name="shared",
        trainable=False,
    )
    local = from_conv(conv, input_shape=(None, 2, 6, 7))
    local_config, conv_config = local.get_config(), conv.get_config()
    for name in (
        "name",
        "trainable",
        "dtype",
        "filters",
        "kernel_size",
        "strides",
        "padding",
        "data_format",
        "dilation_rate",
        "activation",
        "use_bias",
        "kernel_initializer",
        "bias_initializer",
        "kernel_regularizer",
        "bias_regularizer",
        "activity_regularizer",
        "kernel_constraint",
        "bias_constraint",
    ):
        assert local_config[name] == conv_config[name], name
    assert local.bias is None and local.kernel.dtype == "float64"
    assert to_conv(local).get_config() == conv_config


@pytest.mark.parametrize(
    "input_shape", [(10, 4), (None, 10, 4), (7, 10, 4)], ids=["no-batch", "None", "7"]
)
def test_from_conv_builds_an_unbuilt_conv_for_input_shape(input_shape):
    conv = keras.layers.Conv1D(2, 3)
    local = from_conv(conv, input_shape=input_shape)
    assert conv.built and local.kernel.shape == (8, 12, 2)
    x = np.random.default_rng(0).normal(size=(3, 10, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(local(x)), to_numpy(conv(x)), **TOL)


def test_from_conv_includes_a_lora_update_of_the_kernel():
    conv = trained_looking_conv(CONV_LAYER_CASES[5], "channels_last")
    conv.enable_lora(2)
    rng = np.random.default_rng(4)
    conv.lora_kernel_b.assign(rng.normal(size=conv.lora_kernel_b.shape))
    local = from_conv(conv)
    x = conv_inputs(CONV_LAYER_CASES[5], "channels_last")
    np.testing.assert_allclose(to_numpy(local(x)), conv_outputs(conv, x), **TOL)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: keras.layers.Conv2D(4, 3, groups=2), ValueError, r"groups=2"),
        (
            lambda: keras.layers.Conv2DTranspose(4, 3),
            TypeError,
            r"Conv1D, Conv2D or Conv3D.*Conv2DTranspose",
        ),
        (
            lambda: keras.layers.DepthwiseConv2D(3),
            TypeError,
            r"Received DepthwiseConv2D",
        ),
        (lambda: keras.layers.Dense(3), TypeError, r"Received Dense"),
        (lambda: keras.layers.Conv2D(4, 3), ValueError, r"not built and no"),
    ],
)
def test_from_conv_refuses_what_has_no_locally_connected_equivalent(
    make, error, message
):
    with pytest.raises(error, match=message):
        from_conv(make())


def test_from_conv_needs_known_spatial_sizes_and_matching_channels():
    conv = keras.layers.Conv2D(4, 3)
    conv.build((None, None, None, 4))  # fully convolutional
    with pytest.raises(
        ValueError, match=r"known spatial size.*\(None, None, None, 4\)"
    ):
        from_conv(conv)
    with pytest.raises(ValueError, match=r"built for 4 input channels.*3 channels"):
        from_conv(conv, input_shape=(8, 8, 3))
    assert from_conv(conv, input_shape=(8, 8, 4)).output_spatial_shape(
        (None, 8, 8, 4)
    ) == (6, 6)


@pytest.mark.parametrize(
    "layer, message",
    [
        (
            LocallyConnected2D(2, 3, padding="circular"),
            r"padding='circular'.*Circular padding has no Conv equivalent",
        ),
        (
            LocallyConnected2D(2, 3, padding=((1, 0), (0, 1))),
            r"ZeroPadding2D\(\(\(1, 0\), \(0, 1\)\)\) in front of a padding='valid'",
        ),
        (
            LocallyConnected2D(2, 3, strides=(2, 1), dilation_rate=(1, 2)),
            r"strides > 1 with dilation > 1 even on different axes",
        ),
    ],
)
def test_to_conv_refuses_what_a_keras_conv_cannot_express(layer, message):
    layer.build((None, 8, 8, 2))
    with pytest.raises(ValueError, match=message):
        to_conv(layer)


def test_to_conv_refuses_unbuilt_and_non_local_layers():
    with pytest.raises(ValueError, match=r"not built"):
        to_conv(LocallyConnected1D(2, 3))
    with pytest.raises(TypeError, match=r"Received Conv1D"):
        to_conv(keras.layers.Conv1D(2, 3))


def test_to_conv_turns_all_zero_explicit_padding_into_valid():
    local = LocallyConnected3D(2, 2, padding=0)
    local.build((None, 3, 3, 3, 1))
    assert to_conv(local).padding == "valid"


def _conv_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((10, 9, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(3, (2, 3), strides=2, name="c2")(x)
    sequence = keras.layers.Reshape((-1, 3), name="flat")(x)
    y = keras.layers.Conv1D(2, 3, padding="causal", dilation_rate=2, name="c3")(
        sequence
    )
    outputs = keras.layers.Dense(1, name="head")(keras.layers.Flatten()(y))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(5)
    for layer in model.layers:  # as if trained: nothing at its initial value
        layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    return model


def _untie(model, names):
    """The documented recipe (keras_localconn.conversion's docstring)."""

    def clone(layer):
        if layer.name in names:
            return from_conv(layer)
        return layer.__class__.from_config(layer.get_config())

    untied = keras.models.clone_model(model, clone_function=clone)
    for layer in untied.layers:
        if layer.weights and layer.name not in names:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return untied


def test_clone_model_recipe_unties_chosen_convolutions_and_keeps_outputs():
    model = _conv_model()
    untied = _untie(model, {"c2", "c3"})
    kinds = {layer.name: type(layer).__name__ for layer in untied.layers}
    assert kinds["c1"] == "Conv2D"
    assert (kinds["c2"], kinds["c3"]) == ("LocallyConnected2D", "LocallyConnected1D")
    x = np.random.default_rng(6).normal(size=(4, 10, 9, 2)).astype("float32")
    np.testing.assert_allclose(
        untied.predict(x, verbose=0), model.predict(x, verbose=0), **TOL
    )
    # And back: tying the untouched copies again gives the convolutions.
    for name in ("c2", "c3"):
        tied = to_conv(untied.get_layer(name))
        for got, want in zip(tied.get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.training
def test_untied_positions_learn_apart():
    model = _conv_model()
    untied = _untie(model, {"c2"})
    untied.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(8, 10, 9, 2)).astype("float32")
    untied.fit(x, rng.normal(size=(8, 1)), epochs=1, batch_size=8, verbose=0)
    kernel = to_numpy(untied.get_layer("c2").kernel)
    assert not np.allclose(kernel[0], kernel[-1])  # no longer one shared kernel


def test_from_conv_keeps_a_mixed_precision_policy():
    conv = trained_looking_conv(
        CONV_LAYER_CASES[5], "channels_last", dtype="mixed_float16"
    )
    local = from_conv(conv)
    assert local.dtype_policy.name == "mixed_float16"
    assert local.kernel.dtype == "float32" and local.compute_dtype == "float16"
    x = conv_inputs(CONV_LAYER_CASES[5], "channels_last")
    np.testing.assert_allclose(
        to_numpy(local(x)).astype("float32"),
        conv_outputs(conv, x).astype("float32"),
        rtol=1e-2,
        atol=2e-2,
    )


@pytest.mark.parametrize("position_groups", [None, 2], ids=["per-position", "grouped"])
def test_untie_of_a_lora_layer_is_a_plain_layer_with_the_merged_kernel(
    position_groups,
):
    layer = LocallyConnected2D(
        3, 2, position_groups=position_groups, bias_initializer="random_normal"
    )
    x = random_array((2, 5, 4, 2))
    layer.build(x.shape)
    base = to_numpy(layer.kernel)
    layer.enable_lora(2, lora_alpha=3)
    layer.lora_kernel_b.assign(random_array(layer.lora_kernel_b.shape, 3))
    merged = to_numpy(layer.kernel)
    assert np.abs(merged - base).max() > 0.1  # the LoRA update counts
    untied = untie(layer)
    assert not untied.lora_enabled and "lora_rank" not in untied.get_config()
    assert [w.name for w in untied.trainable_weights] == ["kernel", "bias"]
    groups = layer.output_position_groups
    expected = merged if groups is None else merged[groups]
    np.testing.assert_allclose(to_numpy(untied.kernel), expected, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(untied(x)), to_numpy(layer(x)), **TOL)


def test_untie_refuses_a_transposed_layer_with_lora_as_any_transposed_layer():
    """`untie` is for the forward family (the transposed layers have no
    position groups); a transposed layer, LoRA or not, is refused by type."""
    layer = LocallyConnected2DTranspose(3, 2, strides=2, name="up")
    layer.build((None, 4, 4, 2))
    layer.enable_lora(2)
    with pytest.raises(TypeError, match=r"untie: expected a LocallyConnected1D.*'up'"):
        untie(layer)
