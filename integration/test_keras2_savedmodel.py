"""Keras 2 SavedModel directories import: read with TensorFlow, any backend.

Collected only where TensorFlow is installed (conftest.py): tests-tensorflow,
and the export sessions under jax and torch. The fixtures are those of
`test_keras2_formats.py`.
"""

import keras
import pytest

from integration.test_keras2_formats import (
    CUSTOM_OBJECTS,
    FORMATS,
    MODELS,
    TOLERANCE,
    architecture,
    relative_error,
)
from keras_localconn import legacy
from keras_localconn.legacy.__main__ import main as legacy_main


@pytest.mark.parametrize("name", MODELS)
def test_savedmodel_loads_and_predicts_what_keras2_predicted(name):
    model = legacy.load_model(
        FORMATS / name / "savedmodel", custom_objects=CUSTOM_OBJECTS, compile=False
    )
    assert relative_error(model, name) < TOLERANCE


@pytest.mark.parametrize("name", ["nested_lc2d_impl2_cf", "genomic", "face"])
def test_savedmodel_weights_load_into_the_rebuilt_model(name):
    model = architecture(name)
    legacy.load_weights(model, FORMATS / name / "savedmodel")
    assert relative_error(model, name) < TOLERANCE


def test_the_converter_reads_a_savedmodel(tmp_path, capsys):
    target = tmp_path / "face.keras"
    assert legacy_main([str(FORMATS / "face" / "savedmodel"), str(target)]) == 0
    assert "locally connected layer(s) converted" in capsys.readouterr().out
    model = keras.models.load_model(target, compile=False)
    assert relative_error(model, "face") < TOLERANCE
