"""Keras 2 `.h5` files with locally connected layers load under every backend.

The files under `keras2_fixtures/` were written by tf-keras (the Keras 2 API;
`nox -s fixtures`, `make_keras2_fixtures.py`), each with the Keras 2 model's
outputs on stored inputs. Nothing here needs TensorFlow.

The converter is also checked on its own against a NumPy transcription of
what Keras 2's implementations 2 and 3 computed (`keras2_forward`).
"""

import itertools
import json
import math
import pathlib
import shutil

import h5py
import keras
import numpy as np
import pytest

from keras_localconn import LocallyConnected1D, LocallyConnected2D, legacy
from keras_localconn.ops import local_conv

FIXTURES = pathlib.Path(__file__).parent / "keras2_fixtures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
FULL_MODELS = [f["name"] for f in MANIFEST["fixtures"] if not f["weights_only"]]
TOLERANCE = 1e-5


def relative_error(got, expected):
    """Largest absolute difference, relative to the largest expected value."""
    got = keras.ops.convert_to_numpy(got)
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def stored(name):
    data = np.load(FIXTURES / f"{name}.npz")
    return data["inputs"], data["outputs"]


def all_weights(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def copy_fixture(name, tmp_path):
    target = tmp_path / f"{name}.h5"
    shutil.copyfile(FIXTURES / f"{name}.h5", target)
    return target


# --------------------------------------------------------------------------
# The fixtures themselves
# --------------------------------------------------------------------------


def test_fixture_matrix_holds_every_combination_keras2_allowed():
    names = {f["name"] for f in MANIFEST["fixtures"]}
    refused = {r["name"] for r in MANIFEST["refused_by_keras2"]}
    matrix = itertools.product(
        (1, 2), (1, 2, 3), ("cl", "cf"), ("valid", "same"), (1, 2)
    )
    for rank, implementation, data_format, padding, strides in matrix:
        name = f"lc{rank}d_impl{implementation}_{data_format}_{padding}_s{strides}"
        # Keras 2 refused `same` padding with implementation 1, and only that.
        assert (name in refused) == (implementation == 1 and padding == "same")
        assert (name in names) != (name in refused)
    for name in names:
        assert (FIXTURES / f"{name}.h5").is_file()
        assert (FIXTURES / f"{name}.npz").is_file()
    size = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert size < 2 * 2**20


# --------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FULL_MODELS)
def test_loaded_model_predicts_what_keras2_predicted(name):
    inputs, expected = stored(name)
    model = legacy.load_model(FIXTURES / f"{name}.h5", compile=False)
    error = relative_error(model.predict(inputs, verbose=0), expected)
    assert error < TOLERANCE, f"{name}: relative error {error:.3g}"


def test_loaded_model_is_made_of_keras_localconn_layers():
    model = legacy.load_model(FIXTURES / "mixed_conv_lc2d_dense.h5")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer",
        "Conv2D",
        "Permute",
        "LocallyConnected2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    lc = model.layers[3]
    assert isinstance(lc, LocallyConnected2D)
    assert lc.data_format == "channels_first"
    assert lc.implementation == 2
    assert lc.activation is keras.activations.tanh
    assert lc.kernel_regularizer.l2 == pytest.approx(1e-4)
    assert lc.bias_initializer.stddev == pytest.approx(0.1)
    # 7x6 inputs, (2, 3) kernel, strides 2 -> 4x3 outputs. Keras 2 put
    # kernel_size // 2 zeros before each axis; Keras 3's "same" would pad
    # ((0, 1), (0, 1)): the layer gets Keras 2's padding, explicitly.
    assert lc.padding == ((1, 0), (1, 0))
    assert tuple(lc.kernel.shape) == (4 * 3, 3 * 2 * 3, 4)


def test_even_kernel_same_padding_becomes_keras2_explicit_padding():
    # Length 7, kernel 2: Keras 2 padded (1, 0), Keras 3's "same" pads (0, 1).
    model = legacy.load_model(FIXTURES / "lc1d_impl2_cl_same_s1.h5")
    lc = model.layers[-1]
    assert isinstance(lc, LocallyConnected1D)
    assert lc.padding == ((1, 0),)
    assert model.output_shape == (None, 7, 3)
    assert lc.get_config()["padding"] == ((1, 0),)


def test_stacked_lc_layers_each_get_their_own_keras2_padding():
    model = legacy.load_model(FIXTURES / "stacked_lc2d.h5")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["LocallyConnected2D"] * 3
    implementations = [layer.implementation for layer in model.layers]
    assert implementations == [2, 3, 1]
    paddings = [layer.padding for layer in model.layers]
    # kernel (2, 3), same: Keras 2's split; kernel 2, strides 2, same; valid.
    assert paddings == [((1, 0), (1, 1)), ((1, 0), (1, 0)), "valid"]


def test_same_padding_keras3_splits_alike_stays_same():
    # Kernel 3 at stride 1 pads (1, 1) in both Keras versions: no extra layer.
    config = {"name": "lc", "kernel_size": 3, "padding": "same", "implementation": 2}
    kernel = np.ones((5, 2, 5, 4), "float32")  # (steps, channels, out, filters)
    converted = legacy.convert_weights(
        [kernel, np.zeros((5, 4), "float32")], config, (None, 5, 2)
    )
    assert converted.padding == "same"
    assert converted.zero_padding is None


def test_loaded_model_compiles_with_keras2_training_config():
    model = legacy.load_model(FIXTURES / "mixed_conv_lc2d_dense.h5")
    assert model.compiled
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    learning_rate = keras.ops.convert_to_numpy(model.optimizer.learning_rate)
    assert float(learning_rate) == pytest.approx(1e-3)
    # A loss saved by name is compiled by name, which Keras resolves.
    assert model.loss == "categorical_crossentropy"


def test_load_model_with_compile_false_leaves_model_uncompiled():
    model = legacy.load_model(FIXTURES / "mixed_conv_lc2d_dense.h5", compile=False)
    assert not model.compiled


def test_loaded_model_round_trips_through_keras3_format(tmp_path):
    inputs, expected = stored("mixed_conv_lc1d_dense")
    model = legacy.load_model(FIXTURES / "mixed_conv_lc1d_dense.h5")
    model.save(tmp_path / "imported.keras")
    reloaded = keras.models.load_model(tmp_path / "imported.keras")
    assert relative_error(reloaded.predict(inputs, verbose=0), expected) < TOLERANCE


def test_load_model_accepts_str_paths():
    model = legacy.load_model(str(FIXTURES / "lc2d_impl1_cl_valid_s1.h5"))
    inputs, expected = stored("lc2d_impl1_cl_valid_s1")
    assert relative_error(model.predict(inputs, verbose=0), expected) < TOLERANCE


# --------------------------------------------------------------------------
# load_weights
# --------------------------------------------------------------------------


def weights_only_architecture(dense_units=3):
    """`weights_only_model` of make_keras2_fixtures.py, in keras_localconn."""
    inputs = keras.Input((6, 6, 2))
    x = LocallyConnected2D(3, 3)(inputs)
    x = LocallyConnected2D(2, 3, padding="same", activation="relu")(x)
    x = keras.layers.Reshape((8, 4))(keras.layers.Flatten()(x))
    x = LocallyConnected1D(2, 3, strides=2)(x)
    outputs = keras.layers.Dense(dense_units)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def test_load_weights_makes_keras3_rebuild_predict_what_keras2_predicted():
    inputs, expected = stored("weights_only_lc")
    model = weights_only_architecture()
    legacy.load_weights(model, FIXTURES / "weights_only_lc.h5")
    assert relative_error(model.predict(inputs, verbose=0), expected) < TOLERANCE


@pytest.mark.parametrize(
    "name",
    ["lc2d_impl3_cf_valid_s2", "lc1d_impl2_cf_valid_s1", "lc2d_impl1_cl_valid_s2"],
)
def test_load_weights_reads_full_model_files_and_infers_implementation(name):
    inputs, expected = stored(name)
    keras2 = legacy.load_model(FIXTURES / f"{name}.h5", compile=False)
    lc = keras2.layers[-1]
    rebuilt = keras.Sequential(
        [
            keras.Input(inputs.shape[1:]),
            type(lc)(
                lc.filters,
                lc.kernel_size,
                strides=lc.strides,
                data_format=lc.data_format,
            ),
        ]
    )
    legacy.load_weights(rebuilt, FIXTURES / f"{name}.h5")
    assert relative_error(rebuilt(inputs), expected) < TOLERANCE


def test_load_weights_for_other_architecture_raises_and_changes_nothing():
    # Only the last layer differs: everything before it converts cleanly, so
    # an assign-as-you-go loader would have half-loaded the model.
    model = weights_only_architecture(dense_units=4)
    before = all_weights(model)
    with pytest.raises(ValueError, match=r"weights_only_lc\.h5.*'dense") as info:
        legacy.load_weights(model, FIXTURES / "weights_only_lc.h5")
    assert "different architecture" in str(info.value)
    for old, new in zip(before, all_weights(model)):
        np.testing.assert_array_equal(old, new)


def test_load_weights_with_other_layer_count_raises_naming_the_layers():
    model = keras.Sequential([keras.Input((6, 6, 2)), LocallyConnected2D(3, 3)])
    before = all_weights(model)
    with pytest.raises(
        ValueError, match=r"weights_only_lc\.h5: the file holds weights for 4"
    ):
        legacy.load_weights(model, FIXTURES / "weights_only_lc.h5")
    np.testing.assert_array_equal(before[0], all_weights(model)[0])


def test_load_weights_with_wrong_lc_geometry_raises_naming_the_layer():
    # kernel_size 2 instead of 3: the implementation-2 kernel cannot fit.
    model = keras.Sequential(
        [keras.Input((6, 6, 2)), LocallyConnected2D(3, 2, name="wrong")]
    )
    with pytest.raises(ValueError, match=r"lc2d_impl2_cl_valid_s1\.h5.*'wrong'"):
        legacy.load_weights(model, FIXTURES / "lc2d_impl2_cl_valid_s1.h5")


def test_load_weights_gives_a_same_layer_keras2_padding():
    inputs, expected = stored("lc1d_impl2_cl_same_s1")
    model = keras.Sequential(
        [keras.Input((7, 2)), LocallyConnected1D(3, 2, padding="same", name="lc")]
    )
    legacy.load_weights(model, FIXTURES / "lc1d_impl2_cl_same_s1.h5")
    assert model.layers[0].padding == ((1, 0),)
    assert relative_error(model(inputs), expected) < TOLERANCE


def test_load_weights_failing_leaves_weights_and_paddings_unchanged():
    # The same layer, then one whose kernel cannot fit: nothing changes.
    model = keras.Sequential(
        [
            keras.Input((7, 2)),
            LocallyConnected1D(3, 2, padding="same", name="lc"),
            LocallyConnected1D(2, 3, name="wrong"),
        ]
    )
    before = all_weights(model)
    with pytest.raises(ValueError, match="layer"):
        legacy.load_weights(model, FIXTURES / "stacked_lc2d.h5")
    assert model.layers[0].padding == "same"
    for old, new in zip(before, all_weights(model)):
        np.testing.assert_array_equal(old, new)


def test_load_weights_accepts_the_model_load_model_built_with_its_padding():
    inputs, expected = stored("lc1d_impl2_cl_same_s1")
    imported = legacy.load_model(FIXTURES / "lc1d_impl2_cl_same_s1.h5")
    rebuilt = keras.Model.from_config(imported.get_config())
    legacy.load_weights(rebuilt, FIXTURES / "lc1d_impl2_cl_same_s1.h5")
    assert relative_error(rebuilt(inputs), expected) < TOLERANCE


def test_load_weights_accepts_the_padding_layer_its_error_message_asks_for():
    inputs, expected = stored("lc1d_impl2_cl_same_s1")
    model = keras.Sequential(
        [
            keras.Input(inputs.shape[1:]),
            keras.layers.ZeroPadding1D((1, 0), name="lc_keras2_padding"),
            LocallyConnected1D(3, 2, name="lc"),
        ]
    )
    legacy.load_weights(model, FIXTURES / "lc1d_impl2_cl_same_s1.h5")
    assert relative_error(model(inputs), expected) < TOLERANCE


def test_load_weights_refuses_a_keras2_padding_layer_that_pads_otherwise():
    model = keras.Sequential(
        [
            keras.Input((7, 2)),
            keras.layers.ZeroPadding1D((0, 1), name="lc_keras2_padding"),
            LocallyConnected1D(3, 2, name="lc"),
        ]
    )
    with pytest.raises(ValueError, match=r"'lc' follows 'lc_keras2_padding'.*\(0, 1\)"):
        legacy.load_weights(model, FIXTURES / "lc1d_impl2_cl_same_s1.h5")


def test_load_weights_reads_lc_inside_nested_model():
    inputs, expected = stored("nested_lc1d")
    inner = keras.Sequential([keras.Input((6, 2)), LocallyConnected1D(2, 3)])
    outer_inputs = keras.Input((6, 2))
    model = keras.Model(outer_inputs, keras.layers.Dense(2)(inner(outer_inputs)))
    legacy.load_weights(model, FIXTURES / "nested_lc1d.h5")
    assert relative_error(model(inputs), expected) < TOLERANCE


def test_load_weights_into_unbuilt_model_raises():
    model = keras.Sequential([LocallyConnected2D(3, 3)])
    with pytest.raises(ValueError, match="not built"):
        legacy.load_weights(model, FIXTURES / "weights_only_lc.h5")


# --------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("load", ["load_model", "load_weights"])
def test_missing_file_raises_file_not_found_naming_it(load, tmp_path):
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        if load == "load_model":
            legacy.load_model(missing)
        else:
            legacy.load_weights(weights_only_architecture(), missing)


def test_filepath_of_wrong_type_raises_type_error():
    with pytest.raises(TypeError, match="filepath"):
        legacy.load_model(42)


def test_non_keras_file_raises_value_error_naming_it(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not a model\n")
    with pytest.raises(ValueError, match=r"notes\.h5: neither HDF5"):
        legacy.load_model(text)


def test_keras3_archive_loads_as_keras_loads_it(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(tmp_path / "model.keras")
    loaded = legacy.load_model(tmp_path / "model.keras")
    for old, new in zip(all_weights(model), all_weights(loaded), strict=True):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(ValueError, match=r"Keras 3.*model\.load_weights"):
        legacy.load_weights(model, tmp_path / "model.keras")


def test_truncated_file_raises_value_error_naming_it(tmp_path):
    data = (FIXTURES / "mixed_conv_lc2d_dense.h5").read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.h5.*(truncated|HDF5)"):
        legacy.load_model(truncated)
    model = weights_only_architecture()
    with pytest.raises(ValueError, match=r"truncated\.h5"):
        legacy.load_weights(model, truncated)


def test_weights_only_file_given_to_load_model_points_to_load_weights():
    with pytest.raises(ValueError, match="weights-only file.*load_weights"):
        legacy.load_model(FIXTURES / "weights_only_lc.h5")


def test_unknown_layer_class_raises_naming_file_and_layer(tmp_path):
    path = copy_fixture("mixed_conv_lc1d_dense", tmp_path)
    with h5py.File(path, "r+") as file:
        config = file.attrs["model_config"]
        config = config.decode() if hasattr(config, "decode") else config
        file.attrs["model_config"] = config.replace(
            '"class_name": "MaxPooling1D"', '"class_name": "Keras2OnlyPooling"'
        )
    with pytest.raises(
        ValueError, match=r"mixed_conv_lc1d_dense\.h5: layer 'max_pooling1d'.*"
    ) as info:
        legacy.load_model(path)
    assert "Keras2OnlyPooling" in str(info.value)


def test_layer_named_like_a_keras2_class_is_not_taken_for_a_nested_one(tmp_path):
    # The config is walked, not searched as text: a Dense layer named
    # "LocallyConnected1D" is a Dense layer.
    path = copy_fixture("mixed_conv_lc1d_dense", tmp_path)
    with h5py.File(path, "r+") as file:
        config = json.loads(file.attrs["model_config"])
        dense = config["config"]["layers"][-1]
        assert dense["class_name"] == "Dense"
        dense["config"]["name"] = "LocallyConnected1D"
        file.attrs["model_config"] = json.dumps(config)
    model = legacy.load_model(path, compile=False)
    assert isinstance(model.layers[-1], keras.layers.Dense)
    assert model.layers[-1].name == "LocallyConnected1D"


def test_lc_inside_nested_model_loads():
    inputs, expected = stored("nested_lc1d")
    model = legacy.load_model(FIXTURES / "nested_lc1d.h5")
    assert isinstance(model.get_layer("inner").layers[0], LocallyConnected1D)
    assert relative_error(model(inputs), expected) < TOLERANCE


@pytest.mark.parametrize(
    "load",
    [
        lambda path: legacy.load_model(path),
        lambda path: legacy.load_weights(weights_only_architecture(4), path),
    ],
    ids=["load_model", "load_weights"],
)
@pytest.mark.parametrize("fixture", ["weights_only_lc", "truncated", "text"])
def test_file_errors_name_the_path_once_at_the_start(load, fixture, tmp_path):
    if fixture == "truncated":
        data = (FIXTURES / "mixed_conv_lc2d_dense.h5").read_bytes()
        path = tmp_path / "truncated.h5"
        path.write_bytes(data[: len(data) // 2])
    elif fixture == "text":
        path = tmp_path / "text.h5"
        path.write_text("not a model\n")
    else:
        path = copy_fixture(fixture, tmp_path)
    with pytest.raises(ValueError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert message.count(str(path)) == 1


# --------------------------------------------------------------------------
# convert_weights on its own, against Keras 2's arithmetic in NumPy
# --------------------------------------------------------------------------


def keras2_connected_inputs(spatial_shape, kernel_size, position, strides, padding):
    """`tf_keras.src.utils.conv_utils.conv_connected_inputs`, transcribed."""
    ranges = []
    for n, k, o, s in zip(spatial_shape, kernel_size, position, strides):
        center = o * s + (k // 2 if padding == "valid" else 0)
        ranges.append(range(max(0, center - k // 2), min(n, center - k // 2 + k)))
    return ranges


def keras2_output_shape(spatial_shape, kernel_size, strides, padding):
    if padding == "same":
        return tuple(-(-n // s) for n, s in zip(spatial_shape, strides))
    return tuple(
        (n - k) // s + 1 for n, k, s in zip(spatial_shape, kernel_size, strides)
    )


def keras2_dense_kernel(rng, spatial_shape, channels, filters, geometry):
    """A random implementation-2 style dense kernel (*in, ch, *out, filters)
    and its 0/1 connectivity mask, channels_last axis order."""
    kernel_size, strides, padding = geometry
    out = keras2_output_shape(spatial_shape, kernel_size, strides, padding)
    mask = np.zeros((*spatial_shape, *out), bool)
    for o in itertools.product(*map(range, out)):
        ranges = keras2_connected_inputs(
            spatial_shape, kernel_size, o, strides, padding
        )
        for i in itertools.product(*ranges):
            mask[i + o] = True
    rank = len(spatial_shape)
    shape = (*spatial_shape, channels, *out, filters)
    dense = rng.standard_normal(shape).astype("float32")
    mask = np.expand_dims(np.expand_dims(mask, rank), -1)
    return dense, mask, out


def keras2_forward(inputs, dense, mask, bias, data_format):
    """What Keras 2 computed: a masked dense matmul and a raw-reshaped bias."""
    rank = inputs.ndim - 2
    batch = inputs.shape[0]
    if data_format == "channels_first":  # to channels_last, compute, back
        inputs = np.moveaxis(inputs, 1, -1)
    flat = inputs.reshape(batch, -1) @ (dense * mask).reshape(inputs[0].size, -1)
    out = flat.reshape(batch, *dense.shape[rank + 1 :])
    if data_format == "channels_first":
        out = np.moveaxis(out, -1, 1)
        return out + bias.reshape(1, bias.shape[-1], *bias.shape[:-1])
    return out + bias


def keras2_sparse_values(dense, mask, data_format):
    """The implementation-3 vector: nonzeros in sorted (out, in) index order."""
    rank = (dense.ndim - 2) // 2
    spatial, out = dense.shape[:rank], dense.shape[rank + 1 : -1]
    channels, filters = dense.shape[rank], dense.shape[-1]
    entries = []
    for index in zip(*np.nonzero(np.broadcast_to(mask, dense.shape))):
        i, c, o, f = index[:rank], index[rank], index[rank + 1 : -1], index[-1]
        if data_format == "channels_last":
            out_index = np.ravel_multi_index((*o, f), (*out, filters))
            in_index = np.ravel_multi_index((*i, c), (*spatial, channels))
        else:
            out_index = np.ravel_multi_index((f, *o), (filters, *out))
            in_index = np.ravel_multi_index((c, *i), (channels, *spatial))
        entries.append((out_index, in_index, dense[index]))
    return np.array([value for _, _, value in sorted(entries)], "float32")


CONVERTER_CASES = [
    ((7,), (2,), (1,), "same"),
    ((7,), (3,), (2,), "same"),
    ((6,), (4,), (3,), "valid"),
    ((5, 6), (3, 2), (2, 1), "same"),
    ((5, 4), (2, 2), (2, 2), "valid"),
]


@pytest.mark.parametrize("implementation", [2, 3])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "spatial_shape, kernel_size, strides, padding", CONVERTER_CASES
)
def test_converted_weights_compute_what_keras2_computed(
    implementation, data_format, spatial_shape, kernel_size, strides, padding
):
    rng = np.random.default_rng(hash((implementation, spatial_shape)) % 2**32)
    channels, filters, rank = 2, 3, len(spatial_shape)
    dense, mask, out = keras2_dense_kernel(
        rng, spatial_shape, channels, filters, (kernel_size, strides, padding)
    )
    bias = rng.standard_normal((*out, filters)).astype("float32")
    inputs = rng.standard_normal((2, *spatial_shape, channels)).astype("float32")
    if data_format == "channels_first":
        inputs = np.moveaxis(inputs, -1, 1)
        stored_kernel = np.transpose(
            dense,
            (rank, *range(rank), 2 * rank + 1, *range(rank + 1, 2 * rank + 1)),
        )
    else:
        stored_kernel = dense
    if implementation == 3:
        stored_kernel = keras2_sparse_values(dense, mask, data_format)
    expected = keras2_forward(inputs, dense, mask, bias, data_format)

    config = {
        "name": "lc",
        "kernel_size": list(kernel_size),
        "strides": list(strides),
        "padding": padding,
        "data_format": data_format,
        "use_bias": True,
        "implementation": implementation,
    }
    converted = legacy.convert_weights(
        [stored_kernel, bias], config, (None, *inputs.shape[1:])
    )
    kernel, new_bias = converted.weights
    x = inputs
    if converted.zero_padding:
        spatial_axes = (
            range(1, rank + 1) if data_format == "channels_last" else range(2, rank + 2)
        )
        pads = [(0, 0)] * inputs.ndim
        for axis, pad in zip(spatial_axes, converted.zero_padding):
            pads[axis] = pad
        x = np.pad(inputs, pads)
    got = local_conv(
        x, kernel, kernel_size, strides, converted.padding, data_format=data_format
    )
    got = keras.ops.convert_to_numpy(got)
    if data_format == "channels_first":
        got = got + np.moveaxis(new_bias, -1, 0)
    else:
        got = got + new_bias
    assert kernel.shape == (math.prod(out), math.prod(kernel_size) * channels, filters)
    assert relative_error(got, expected) < TOLERANCE


def test_channels_first_bias_is_permuted_like_keras2_raw_reshape():
    bias = np.arange(3 * 2, dtype="float32").reshape(3, 2)  # (out=3, filters=2)
    kernel = np.zeros((3, 2 * 1, 2), "float32")
    config = {"kernel_size": 2, "data_format": "channels_first", "name": "lc"}
    converted = legacy.convert_weights([kernel, bias], config, (None, 1, 4))
    # Keras 2 added bias.reshape(filters, out): filter 0 got 0, 1, 2 at the
    # three positions, filter 1 got 3, 4, 5; not bias.T.
    np.testing.assert_array_equal(converted.weights[1], [[0, 3], [1, 4], [2, 5]])


def test_converter_rejects_options_keras2_never_had():
    config = {"name": "lc", "kernel_size": 3, "dilation_rate": 2}
    with pytest.raises(ValueError, match="'lc'.*dilation"):
        legacy.convert_weights([np.zeros((1, 6, 1))], config, (None, 7, 2))


def test_converter_rejects_kernel_that_does_not_fit_naming_the_layer():
    config = {
        "name": "lc_bad",
        "kernel_size": [3],
        "implementation": 2,
        "data_format": "channels_last",
    }
    kernel = np.zeros((6, 2, 4, 3), "float32")  # input 6 -> 4 outputs, not 3
    with pytest.raises(ValueError, match=r"Keras 2 layer 'lc_bad'.*\(6, 2, 4, 3\)"):
        legacy.convert_weights([kernel, np.zeros((3, 3))], config, (None, 5, 2))
    with pytest.raises(ValueError, match=r"'lc_bad'.*vector of 26 \* filters"):
        legacy.convert_weights(
            [np.zeros(25, "float32"), np.zeros((3, 3))],
            {**config, "implementation": 3, "padding": "same"},
            (None, 5, 2),
        )
