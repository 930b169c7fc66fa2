"""When Keras' own `model.load_weights` reads a Keras 2 file correctly.

docs/porting-deepface.md tells users to load implementation-1,
`channels_last` weights files with `model.load_weights` and everything else
with `keras_localconn.legacy`. These tests keep both halves of that advice
true, on the Keras 2 files under `keras2_fixtures/` (written by tf-keras).
"""

import pathlib

import keras
import numpy as np
import pytest

from keras_localconn import legacy

FIXTURES = pathlib.Path(__file__).parent / "keras2_fixtures"


def keras2_outputs(name):
    data = np.load(FIXTURES / f"{name}.npz")
    return data["inputs"], data["outputs"]


def rebuilt_with_keras_load_weights(name):
    """The architecture (from `legacy`), weights read by Keras' loader."""
    architecture = legacy.load_model(FIXTURES / f"{name}.h5", compile=False)
    model = keras.models.clone_model(architecture)  # fresh weights
    model.load_weights(FIXTURES / f"{name}.h5")
    return model


@pytest.mark.parametrize(
    "name",
    ["lc1d_impl1_cl_valid_s2", "lc2d_impl1_cl_valid_s1", "lc2d_impl1_cl_valid_s2"],
)
def test_keras_load_weights_reads_implementation_1_channels_last(name):
    inputs, expected = keras2_outputs(name)
    model = rebuilt_with_keras_load_weights(name)

    np.testing.assert_allclose(
        model.predict(inputs, verbose=0), expected, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["lc1d_impl1_cf_valid_s1", "lc2d_impl1_cf_valid_s1"])
def test_keras_load_weights_mislays_channels_first_biases_silently(name):
    """Keras 2 added a `channels_first` bias through a raw reshape; only
    `legacy` permutes it back. Keras' loader sees matching shapes and loads."""
    inputs, expected = keras2_outputs(name)
    model = rebuilt_with_keras_load_weights(name)
    legacy_model = legacy.load_model(FIXTURES / f"{name}.h5", compile=False)

    wrong = np.abs(model.predict(inputs, verbose=0) - expected).max()
    assert wrong > 0.1 * np.abs(expected).max()
    np.testing.assert_allclose(
        legacy_model.predict(inputs, verbose=0), expected, atol=1e-5, rtol=1e-5
    )
