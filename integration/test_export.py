"""`model.export` (TensorFlow SavedModel) of models holding locally connected layers.

The SavedModel holds the layers' `keras.ops` computation traced to TensorFlow
ops; `tf.saved_model.load` serves it with the exported weights.
"""

import keras
import numpy as np
import pytest

from integration.export_models import MODELS, random_inputs

pytestmark = pytest.mark.backends("tensorflow")

# The same float32 graph, run by Keras or by the SavedModel runtime.
TOLERANCE = 1e-5


@pytest.mark.parametrize("make_model", MODELS.values(), ids=MODELS.keys())
def test_exported_saved_model_serves_the_keras_predictions(make_model, tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = make_model()
    x = random_inputs(model)
    expected = model.predict(x, verbose=0)

    model.export(str(tmp_path / "saved_model"), format="tf_saved_model")
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    served = reloaded.serve(tf.constant(x)).numpy()

    assert served.shape == expected.shape
    np.testing.assert_allclose(served, expected, atol=TOLERANCE, rtol=TOLERANCE)


def test_exported_saved_model_accepts_other_batch_sizes(tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = MODELS["2d"]()
    model.export(str(tmp_path / "saved_model"), format="tf_saved_model")
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))

    for batch in (1, 3, 17):
        x = random_inputs(model, batch)
        np.testing.assert_allclose(
            reloaded.serve(tf.constant(x)).numpy(),
            model.predict(x, verbose=0),
            atol=TOLERANCE,
            rtol=TOLERANCE,
        )


def test_exported_saved_model_serves_trained_weights(tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = MODELS["1d"]()
    x = random_inputs(model, batch=16)
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
