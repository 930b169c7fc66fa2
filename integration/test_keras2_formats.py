"""Every form Keras 2 saved a model in imports, wherever its layers sit.

The files under `keras2_fixtures/formats/` were written by tf-keras 2.21
(`make_keras2_fixtures.py`): each model (locally connected layers at the top
level, in a nested model, in `TimeDistributed`, in a user layer class, a
genomic-prediction and a face-style model; implementations 1, 2 and 3; both
data formats) as an `.h5` model, `.h5` weights, a `.keras` archive,
`.weights.h5` and a SavedModel, with the Keras 2 model's outputs. The
SavedModel cases, which read the directory with TensorFlow, are in
`test_keras2_savedmodel.py`.
"""

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from integration import keras2_custom_layers
from keras_localconn import LocallyConnected1D, LocallyConnected2D, legacy
from keras_localconn.legacy import _config, _formats
from keras_localconn.legacy.__main__ import main as legacy_main

FORMATS = pathlib.Path(__file__).parent / "keras2_fixtures" / "formats"
MANIFEST = json.loads((FORMATS / "MANIFEST.json").read_text())
MODELS = [model["name"] for model in MANIFEST["models"]]
CUSTOM_OBJECTS = {
    "LocalBlock": keras2_custom_layers.LocalBlock,
    "ResidualLocalBlock": keras2_custom_layers.ResidualLocalBlock,
}
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
TOLERANCE = 1e-5


def keras2_outputs(name):
    data = np.load(FORMATS / name / "data.npz")
    return data["inputs"], data["outputs"]


def relative_error(model, name):
    inputs, expected = keras2_outputs(name)
    got = keras.ops.convert_to_numpy(model(inputs))
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def architecture(name):
    """The Keras 3 model a user builds again: the Keras 2 config, as is."""
    config = _formats.read(str(FORMATS / name / "full.h5")).model_config
    return _config.model_from_config(config, CUSTOM_OBJECTS, safe_mode=True)


def locally_connected(model):
    return [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, (LocallyConnected1D, LocallyConnected2D))
    ]


@pytest.mark.parametrize("form", ["full.h5", "model.keras"])
@pytest.mark.parametrize("name", MODELS)
def test_load_model_predicts_what_keras2_predicted(name, form):
    model = legacy.load_model(
        FORMATS / name / form, custom_objects=CUSTOM_OBJECTS, compile=False
    )
    assert locally_connected(model)
    assert relative_error(model, name) < TOLERANCE


@pytest.mark.parametrize("form", ["weights.h5", "model.weights.h5"])
@pytest.mark.parametrize("name", MODELS)
def test_load_weights_makes_the_rebuilt_model_predict_what_keras2_predicted(name, form):
    model = architecture(name)
    legacy.load_weights(model, FORMATS / name / form)
    assert relative_error(model, name) < TOLERANCE


@pytest.mark.parametrize("name", ["nested_lc2d_impl3_cf", "genomic", "face"])
@pytest.mark.parametrize("form", ["full.h5", "model.keras"])
def test_load_weights_reads_the_weights_of_full_model_files(name, form):
    model = architecture(name)
    legacy.load_weights(model, FORMATS / name / form)
    assert relative_error(model, name) < TOLERANCE


def test_the_form_is_recognised_from_the_content_not_the_name(tmp_path):
    for form in ("full.h5", "model.keras"):
        renamed = tmp_path / f"{form}.bin"
        shutil.copyfile(FORMATS / "face" / form, renamed)
        model = legacy.load_model(renamed, compile=False)
        assert relative_error(model, "face") < TOLERANCE
    renamed = tmp_path / "weights.bin"
    shutil.copyfile(FORMATS / "genomic" / "model.weights.h5", renamed)
    model = architecture("genomic")
    legacy.load_weights(model, renamed)
    assert relative_error(model, "genomic") < TOLERANCE


@pytest.mark.parametrize("form", ["full.h5", "model.keras"])
def test_full_models_compile_with_their_training_configuration(form):
    model = legacy.load_model(FORMATS / "face" / form)
    assert model.compiled
    assert isinstance(model.optimizer, keras.optimizers.Optimizer)


def test_keras2_same_padding_becomes_explicit_in_a_nested_model():
    model = legacy.load_model(FORMATS / "nested_lc2d_impl2_cl" / "model.keras")
    paddings = [layer.padding for layer in locally_connected(model)]
    assert any(not isinstance(padding, str) for padding in paddings)
    reloaded = keras.Model.from_config(model.get_config())
    assert [layer.padding for layer in locally_connected(reloaded)] == paddings


# --------------------------------------------------------------------------
# Keras' own loaders
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["custom_lc1d_impl3_cf", "custom_lc1d_impl2_cl", "genomic"]
)
def test_keras_load_weights_converts_keras2_kernels_it_can(name):
    """Keras' `.weights.h5` loader hands every layer its arrays: a kernel in
    implementation 2 or 3's layout is converted where the padding allows."""
    model = architecture(name)
    model.load_weights(FORMATS / name / "model.weights.h5")
    assert relative_error(model, name) < TOLERANCE


def test_keras_load_weights_points_to_legacy_where_keras2_padded_otherwise():
    model = architecture("nested_lc2d_impl2_cl")
    with pytest.raises(ValueError, match=r"keras_localconn\.legacy\.load_weights"):
        model.load_weights(FORMATS / "nested_lc2d_impl2_cl" / "model.weights.h5")


def test_a_kernel_of_no_keras2_layout_is_refused_not_taken_for_implementation_1():
    layer = LocallyConnected1D(2, 3)
    keras.Sequential([keras.Input((6, 2)), layer])
    kernel = np.zeros((4, 6), "float32")  # 2-D: no implementation in 1D
    with pytest.raises(ValueError, match="layout of no Keras 2 implementation"):
        layer.load_own_variables({"0": kernel, "1": np.zeros((4, 2), "float32")})


# --------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------


def test_a_custom_class_not_passed_is_named_with_how_to_pass_it():
    for form in ("full.h5", "model.keras"):
        path = FORMATS / "genomic" / form
        with pytest.raises(
            ValueError,
            match=r"ResidualLocalBlock.*custom_objects=\{'ResidualLocalBlock'",
        ) as info:
            _unregistered(legacy.load_model, path)
        assert str(info.value).startswith(str(path))


def _unregistered(load, path):
    """`load(path)` while the fixtures' ports are not registered with Keras."""
    registered = keras.saving.get_custom_objects()
    saved = {key: registered.pop(key) for key in list(registered) if "fixtures>" in key}
    try:
        return load(path)
    finally:
        registered.update(saved)


def test_a_truncated_archive_is_a_clear_error(tmp_path):
    data = (FORMATS / "face" / "model.keras").read_bytes()
    truncated = tmp_path / "face.keras"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"face\.keras: .*(truncated|corrupt)"):
        legacy.load_model(truncated)


def test_an_unrelated_keras2_model_loads_and_its_weights_fit_nothing_else():
    path = FORMATS / "unrelated" / "model.keras"
    model = legacy.load_model(path, compile=False)
    assert not locally_connected(model)
    target = architecture("face")
    before = [keras.ops.convert_to_numpy(w).copy() for w in target.weights]
    with pytest.raises(ValueError, match=r"unrelated/model\.keras: "):
        legacy.load_weights(target, path)
    for old, variable in zip(before, target.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(variable))


@pytest.mark.parametrize("form", ["weights.h5", "model.weights.h5"])
def test_weights_of_another_architecture_change_nothing(form):
    target = architecture("face")
    before = [keras.ops.convert_to_numpy(w).copy() for w in target.weights]
    with pytest.raises(ValueError, match=r"genomic/"):
        legacy.load_weights(target, FORMATS / "genomic" / form)
    for old, variable in zip(before, target.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(variable))


def test_a_savedmodel_is_read_with_tensorflow_or_says_what_to_install():
    path = FORMATS / "no_keras_metadata"
    if HAS_TENSORFLOW:
        with pytest.raises(ValueError, match=r"no_keras_metadata: .*Keras"):
            legacy.load_model(path)
    else:
        with pytest.raises(ImportError, match=r"no_keras_metadata: .*pip install"):
            legacy.load_model(path)


def test_a_directory_that_is_no_savedmodel_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a TensorFlow SavedModel"):
        legacy.load_model(tmp_path)


# --------------------------------------------------------------------------
# The converter
# --------------------------------------------------------------------------


def convert(*args):
    return subprocess.run(
        [sys.executable, "-m", "keras_localconn.legacy", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).parent.parent,
        timeout=300,
    )


@pytest.mark.parametrize("form", ["full.h5", "model.keras"])
def test_the_converter_writes_a_keras3_file_that_predicts_the_same(
    form, tmp_path, capsys
):
    target = tmp_path / "genomic.keras"
    status = legacy_main(
        [
            str(FORMATS / "genomic" / form),
            str(target),
            "--custom-objects",
            "integration.keras2_custom_layers",
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out.count("implementation 3") == 4
    assert "4 locally connected layer(s) converted" in out
    assert "loading the weights" in err
    model = keras.models.load_model(target, compile=False)
    assert relative_error(model, "genomic") < TOLERANCE


def test_the_converter_command_fails_with_the_message_and_writes_nothing(tmp_path):
    target = tmp_path / "out.keras"
    run = convert(FORMATS / "genomic" / "weights.h5", target)
    assert run.returncode == 1
    assert "weights-only file" in run.stderr
    assert not target.exists()
