"""The Keras 2 import package: its public names and its config checks."""

import pytest

from keras_localconn import legacy
from keras_localconn.legacy import _config


def test_public_names_are_importable_from_keras_localconn_legacy():
    from keras_localconn.legacy import (  # noqa: F401
        ConvertedWeights,
        convert_weights,
        load_model,
        load_weights,
    )

    assert sorted(legacy.__all__) == [
        "ConvertedWeights",
        "convert_weights",
        "load_model",
        "load_weights",
    ]


def _sequential(*layers):
    return {"class_name": "Sequential", "config": {"name": "m", "layers": list(layers)}}


def _lc(name):
    return {"class_name": "LocallyConnected1D", "config": {"name": name}}


def _wrapped(layer):
    return {
        "class_name": "TimeDistributed",
        "config": {"name": "frames", "layer": layer},
    }


def test_layer_entries_reach_layers_in_wrappers_and_nested_models():
    config = _sequential(_wrapped(_lc("a")), _sequential(_lc("b"), _wrapped(_lc("c"))))

    names = [entry["config"]["name"] for entry in _config.layer_entries(config)]

    assert names == ["frames", "a", "m", "b", "frames", "c"]


def test_config_check_accepts_locally_connected_layers_at_any_depth():
    _config.check_model_config(_sequential(_sequential(_wrapped(_lc("lc")))), None)


def test_config_check_refuses_an_unknown_class_inside_a_nested_model():
    unknown = {"class_name": "GenoBlock", "config": {"name": "block"}}
    with pytest.raises(
        ValueError, match=r"layer 'block' is a GenoBlock.*custom_objects=\{'GenoBlock'"
    ):
        _config.check_model_config(_sequential(_sequential(unknown)), None)


def test_config_check_takes_custom_objects_for_nested_user_classes():
    unknown = {"class_name": "GenoBlock", "config": {"name": "block"}}
    _config.check_model_config(_sequential(_wrapped(unknown)), {"GenoBlock": object})


def test_config_check_reads_class_names_not_layer_names():
    dense = {"class_name": "Dense", "config": {"name": "LocallyConnected1D"}}
    _config.check_model_config(_sequential(_lc("lc"), dense), None)


def test_config_check_refuses_an_unknown_class_naming_the_layer():
    unknown = {"class_name": "Keras2Only", "config": {"name": "odd"}}
    with pytest.raises(ValueError, match=r"layer 'odd' is a Keras2Only"):
        _config.check_model_config(_sequential(unknown), None)
