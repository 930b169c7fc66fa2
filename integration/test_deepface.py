"""DeepFace, ported to Keras 3 by changing one import, gives the same embeddings.

deepface builds its DeepFace network in tf.keras with three
`LocallyConnected2D` layers and loads the published Keras 2 weights file with
Keras' own `model.load_weights`. Here tf-keras builds it at its real sizes
(L4's kernel alone is 239 MB) with random weights and writes the weights file,
the full model and the F7 embeddings of a few faces; the same code then
builds it in Keras 3 with `keras_localconn.LocallyConnected2D`, and each way of
loading must give the embeddings tf-keras computed. Last, the Keras 3 model
quantized with `model.quantize("int8")` must keep its embeddings' direction
and a quarter of its file size.

tf-keras writes the files in a subprocess, which also keeps its 550 MB model
out of this process. `tests-tensorflow` runs this module under tensorflow and
`nox -s export` under jax and torch, the sessions that install tf-keras;
elsewhere conftest.py leaves it out of the collection. It takes 2 to 4
minutes on two cores, most of it tf-keras building its per-position loop
for L4.
"""

import gc
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from integration import deepface
from keras_localconn import LocallyConnected2D, legacy

SCRIPT = pathlib.Path(deepface.__file__)
# float32 through eight layers, summed in another order than tf-keras did.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def keras2_files(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("deepface")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=SCRIPT.parent.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out_dir


@pytest.fixture(scope="module")
def keras2_embeddings(keras2_files):
    data = np.load(keras2_files / "embeddings.npz")
    return data["inputs"], data["f7"]


@pytest.fixture(scope="module")
def keras3_deepface():
    """deepface's model code with its import changed, built once (550 MB)."""
    return deepface.build(keras, LocallyConnected2D)


def zeroed(model):
    """`model` with every weight zero, so that what a loader misses shows."""
    for variable in model.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    return model


def relative_error(got, expected):
    """Largest absolute difference, relative to the largest expected value."""
    got = keras.ops.convert_to_numpy(got)
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def test_keras2_embeddings_are_not_degenerate(keras2_embeddings):
    _, f7 = keras2_embeddings
    assert f7.shape == (4, 4096)
    # ReLU embeddings with a good share of active units, distinct per face.
    assert 0.1 < np.mean(f7 > 0) < 0.9
    assert np.abs(f7[0] - f7[1]).max() > 1e-2 * np.abs(f7).max()


def test_deepface_code_with_its_import_changed_loads_the_weights_file(
    keras2_files, keras2_embeddings, keras3_deepface
):
    """deepface's own path: build the model, then `model.load_weights(h5)`."""
    inputs, expected = keras2_embeddings
    base_model = zeroed(keras3_deepface)
    base_model.load_weights(keras2_files / "weights.h5")

    f7 = deepface.embedding_model(keras, base_model).predict(inputs, verbose=0)

    assert relative_error(f7, expected) < TOLERANCE


def test_legacy_load_weights_loads_the_weights_file(
    keras2_files, keras2_embeddings, keras3_deepface
):
    inputs, expected = keras2_embeddings
    base_model = zeroed(keras3_deepface)
    legacy.load_weights(base_model, keras2_files / "weights.h5")

    f7 = deepface.embedding_model(keras, base_model).predict(inputs, verbose=0)

    assert relative_error(f7, expected) < TOLERANCE


def test_legacy_load_model_loads_the_full_model(keras2_files, keras2_embeddings):
    inputs, expected = keras2_embeddings
    base_model = legacy.load_model(keras2_files / "model.h5")

    assert [layer.name for layer in base_model.layers] == [
        "C1", "M2", "C3", "L4", "L5", "L6", "F0", "F7", "D0", "F8"
    ]  # fmt: skip
    assert isinstance(base_model.get_layer("L4"), LocallyConnected2D)
    f7 = deepface.embedding_model(keras, base_model).predict(inputs, verbose=0)
    del base_model  # its 550 MB, before the next module's tests
    gc.collect()

    assert relative_error(f7, expected) < TOLERANCE


@pytest.mark.needs_keras("3.13.0")
def test_model_quantize_int8_keeps_the_embeddings_and_quarters_the_file(tmp_path):
    """`model.quantize("int8")` on DeepFace (random He-scaled weights): L4-L6
    and the Dense layers become int8, the F7 embeddings keep their direction
    and the `.keras` file shrinks to about a quarter."""
    base_model = deepface.build(keras, LocallyConnected2D)
    deepface.randomize(base_model)
    inputs = np.random.default_rng(1).uniform(size=(4, *deepface.INPUT_SHAPE))
    inputs = inputs.astype("float32")
    float_f7 = deepface.embedding_model(keras, base_model).predict(inputs, verbose=0)
    float_path = tmp_path / "float.keras"
    base_model.save(float_path)

    base_model.quantize("int8")  # Keras quantizes no Conv2D: C1, C3 stay float
    assert {
        layer.name: layer.quantization_mode
        for layer in base_model.layers
        if layer.name in ("C1", "L4", "L5", "L6", "F7", "F8")
    } == {"C1": None, **dict.fromkeys(("L4", "L5", "L6", "F7", "F8"), "int8")}
    # A new F7 model: under TensorFlow, one already called keeps its compiled
    # function, which reads the float kernels (as Keras' own layers do).
    int8_f7 = deepface.embedding_model(keras, base_model).predict(inputs, verbose=0)
    int8_path = tmp_path / "int8.keras"
    base_model.save(int8_path)
    del base_model
    gc.collect()

    assert np.abs(int8_f7 - float_f7).max() > 1e-4 * np.abs(float_f7).max()

    cosine = np.sum(int8_f7 * float_f7, axis=1) / (
        np.linalg.norm(int8_f7, axis=1) * np.linalg.norm(float_f7, axis=1)
    )
    assert np.all(cosine >= 0.99), cosine
    assert int8_path.stat().st_size <= 0.3 * float_path.stat().st_size
