"""`model.export` (TensorFlow SavedModel) of models holding locally connected layers.

The SavedModel holds the layers' `keras.ops` computation traced to TensorFlow
ops; `tf.saved_model.load` serves it with the exported weights.
"""

import keras
import numpy as np
import pytest

from keras_localconn import LocallyConnected1D, LocallyConnected2D, LocallyConnected3D

pytestmark = pytest.mark.backends("tensorflow")

# The same float32 graph, run by Keras or by the SavedModel runtime.
TOLERANCE = 1e-5


def _sequence_model():
    inputs = keras.Input((12, 3))
    x = LocallyConnected1D(6, 3, strides=2, activation="relu")(inputs)
    x = LocallyConnected1D(4, 2, padding="causal")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def _image_model():
    inputs = keras.Input((9, 8, 2))
    x = LocallyConnected2D(5, 3, padding="same", activation="relu")(inputs)
    x = LocallyConnected2D(3, (2, 3), strides=2, data_format="channels_last")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def _channels_first_image_model():
    inputs = keras.Input((2, 7, 6))
    x = LocallyConnected2D(4, 3, data_format="channels_first", dilation_rate=2)(inputs)
    return keras.Model(inputs, keras.layers.Flatten()(x))


def _volume_model():
    inputs = keras.Input((5, 4, 6, 2))
    x = LocallyConnected3D(3, (2, 2, 3), activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Flatten()(x))


MODELS = [
    pytest.param(_sequence_model, id="1d"),
    pytest.param(_image_model, id="2d"),
    pytest.param(_channels_first_image_model, id="2d-channels-first"),
    pytest.param(_volume_model, id="3d"),
]


def _inputs(model, batch=5):
    shape = (batch, *model.input_shape[1:])
    return np.random.default_rng(0).normal(size=shape).astype("float32")


@pytest.mark.parametrize("make_model", MODELS)
def test_exported_saved_model_serves_the_keras_predictions(make_model, tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = make_model()
    x = _inputs(model)
    expected = model.predict(x, verbose=0)

    model.export(str(tmp_path / "saved_model"), format="tf_saved_model")
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    served = reloaded.serve(tf.constant(x)).numpy()

    assert served.shape == expected.shape
    np.testing.assert_allclose(served, expected, atol=TOLERANCE, rtol=TOLERANCE)


def test_exported_saved_model_accepts_other_batch_sizes(tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = _image_model()
    model.export(str(tmp_path / "saved_model"), format="tf_saved_model")
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))

    for batch in (1, 3, 17):
        x = _inputs(model, batch)
        np.testing.assert_allclose(
            reloaded.serve(tf.constant(x)).numpy(),
            model.predict(x, verbose=0),
            atol=TOLERANCE,
            rtol=TOLERANCE,
        )


def test_exported_saved_model_serves_trained_weights(tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = _sequence_model()
    x = _inputs(model, batch=16)
    before = model.predict(x, verbose=0)
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, np.ones((16, 2), "float32"), epochs=2, verbose=0)
    expected = model.predict(x, verbose=0)

    model.export(str(tmp_path / "saved_model"), format="tf_saved_model")
    # Keep the loaded object: its variables die with it.
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    served = reloaded.serve(tf.constant(x)).numpy()

    assert np.abs(expected - before).max() > 1e-4
    np.testing.assert_allclose(served, expected, atol=TOLERANCE, rtol=TOLERANCE)
