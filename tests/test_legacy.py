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


def test_config_check_finds_a_locally_connected_layer_inside_a_wrapper():
    wrapped = {
        "class_name": "TimeDistributed",
        "config": {"name": "frames", "layer": _lc("lc")},
    }
    with pytest.raises(ValueError, match=r"'frames' \(TimeDistributed\).*Locally"):
        _config.check_model_config(_sequential(wrapped), None)


def test_config_check_finds_one_inside_a_nested_model():
    with pytest.raises(ValueError, match=r"'m' \(Sequential\) contains a Locally"):
        _config.check_model_config(_sequential(_sequential(_lc("lc"))), None)


def test_config_check_reads_class_names_not_layer_names():
    dense = {"class_name": "Dense", "config": {"name": "LocallyConnected1D"}}
    _config.check_model_config(_sequential(_lc("lc"), dense), None)


def test_config_check_refuses_an_unknown_class_naming_the_layer():
    unknown = {"class_name": "Keras2Only", "config": {"name": "odd"}}
    with pytest.raises(ValueError, match=r"layer 'odd' is a Keras2Only"):
        _config.check_model_config(_sequential(unknown), None)
