"""`read_savedmodel` reads a Keras 2 SavedModel as `.h5` reading reads `full.h5`.

Every fixture under `keras2_fixtures/formats/` was saved by tf-keras both as
`full.h5` and as `savedmodel/`; the reader must give the same configs and
the same stored arrays, in the same order, as the `.h5` reader. A few more
SavedModels (a Sequential with non-trainable weights and a frozen layer,
metadata where TensorFlow < 2.5 put it) are written here with tf-keras.
Collected only where tf-keras (and so TensorFlow) is installed (conftest.py).
"""

import json
import pathlib
import shutil
import sys

import h5py
import numpy as np
import pytest

from keras_localconn.legacy import _hdf5
from keras_localconn.legacy._savedmodel import read_savedmodel

FORMATS = pathlib.Path(__file__).parent / "keras2_fixtures" / "formats"
MANIFEST = json.loads((FORMATS / "MANIFEST.json").read_text())
WITH_SAVEDMODEL = [m["name"] for m in MANIFEST["models"] if "savedmodel" in m["files"]]
# Written by the `.h5` writer's newer serialization only; both forms are
# valid Keras 2 configs.
H5_ONLY_KEYS = {"module", "registered_name", "build_config"}


def h5_reading(path):
    with h5py.File(path, "r") as file:
        model_config = _hdf5.json_attribute(file, "model_config")
        training_config = _hdf5.json_attribute(file, "training_config")
        stored = _hdf5.read_weights(file["model_weights"])
    return model_config, training_config, stored


def without_h5_only_keys(config):
    if isinstance(config, dict):
        return {
            key: without_h5_only_keys(value)
            for key, value in config.items()
            if key not in H5_ONLY_KEYS
        }
    if isinstance(config, list):
        return [without_h5_only_keys(value) for value in config]
    return config


def assert_same_reading(got, expected):
    got_model, got_training, got_stored = got
    expected_model, expected_training, expected_stored = expected
    assert without_h5_only_keys(got_model) == without_h5_only_keys(expected_model)
    assert got_training == expected_training
    assert list(got_stored) == list(expected_stored)
    for layer_name, layer in expected_stored.items():
        assert got_stored[layer_name].names == layer.names
        assert len(got_stored[layer_name].arrays) == len(layer.arrays)
        for got_array, array in zip(got_stored[layer_name].arrays, layer.arrays):
            assert got_array.dtype == array.dtype
            np.testing.assert_array_equal(got_array, array)


@pytest.mark.parametrize("name", WITH_SAVEDMODEL)
def test_savedmodel_reads_as_the_same_models_full_h5(name):
    assert_same_reading(
        read_savedmodel(str(FORMATS / name / "savedmodel")),
        h5_reading(FORMATS / name / "full.h5"),
    )


def test_fixture_readings_cover_nesting_wrappers_user_layers_and_training_config():
    nestings = {
        m["nesting"] for m in MANIFEST["models"] if m["name"] in WITH_SAVEDMODEL
    }
    assert nestings == {"top", "nested", "wrapped", "custom"}
    model_config, training_config, stored = read_savedmodel(
        str(FORMATS / "face" / "savedmodel")
    )
    assert model_config["class_name"] == "Functional"
    assert training_config["loss"] == "mse"
    # The nested Sequential's three LC2D layers are one stored layer, as in .h5.
    assert list(stored) == ["c1", "locally_connected", "f8"]
    assert [n.split("/")[0] for n in stored["locally_connected"].names] == [
        "l4", "l4", "l5", "l5", "l6", "l6",
    ]  # fmt: skip


def save_both_ways(model, tmp_path):
    model.save(tmp_path / "full.h5", save_format="h5")
    model.save(tmp_path / "savedmodel", save_format="tf")
    return tmp_path / "savedmodel", tmp_path / "full.h5"


def test_non_trainable_weights_follow_trainable_ones_as_in_h5(tmp_path):
    import tf_keras

    layers = tf_keras.layers
    tf_keras.utils.set_random_seed(3)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((6, 2)),
            layers.LocallyConnected1D(2, 2, implementation=2, name="lc"),
            layers.BatchNormalization(name="norm"),
            layers.Dense(3, name="frozen"),
            layers.Dense(1, name="dense"),
        ],
        name="sequential_model",
    )
    model.get_layer("frozen").trainable = False
    for layer in model.layers:
        layer.set_weights(
            [np.random.default_rng(1).normal(size=w.shape) for w in layer.weights]
        )
    savedmodel, full_h5 = save_both_ways(model, tmp_path)
    got = read_savedmodel(str(savedmodel))
    assert_same_reading(got, h5_reading(full_h5))
    assert got[2]["norm"].names == [
        "norm/gamma:0",
        "norm/beta:0",
        "norm/moving_mean:0",
        "norm/moving_variance:0",
    ]
    assert got[2]["frozen"].names == ["frozen/kernel:0", "frozen/bias:0"]


def test_metadata_held_in_saved_model_pb_as_before_tensorflow_2_5(tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2
    from tf_keras.protobuf import saved_metadata_pb2

    directory = tmp_path / "savedmodel"
    shutil.copytree(FORMATS / "genomic" / "savedmodel", directory)
    metadata = saved_metadata_pb2.SavedMetadata()
    metadata.ParseFromString((directory / "keras_metadata.pb").read_bytes())
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((directory / "saved_model.pb").read_bytes())
    nodes = saved_model.meta_graphs[0].object_graph_def.nodes
    for node in metadata.nodes:
        nodes[node.node_id].user_object.metadata = node.metadata
    (directory / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    (directory / "keras_metadata.pb").unlink()
    assert_same_reading(
        read_savedmodel(str(directory)), h5_reading(FORMATS / "genomic" / "full.h5")
    )


def test_savedmodel_without_keras_metadata_is_refused():
    with pytest.raises(ValueError, match=r"not written.*tf\.saved_model\.save"):
        read_savedmodel(str(FORMATS / "no_keras_metadata"))


@pytest.mark.parametrize("what", ["empty directory", "keras zip", "missing"])
def test_what_is_not_a_savedmodel_is_refused(what, tmp_path):
    path = {
        "empty directory": tmp_path,
        "keras zip": FORMATS / "unrelated" / "model.keras",
        "missing": tmp_path / "missing",
    }[what]
    with pytest.raises(ValueError, match="not a TensorFlow SavedModel"):
        read_savedmodel(str(path))


def test_missing_tensorflow_is_an_import_error_that_says_what_to_install(
    monkeypatch,
):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import fails
    with pytest.raises(ImportError, match=r"SavedModel.*pip install tensorflow"):
        read_savedmodel(str(FORMATS / "genomic" / "savedmodel"))
