"""The DeepFace network, as deepface (`FbDeepFace`) builds it, in Keras 2 or 3.

`build(keras, LocallyConnected2D)` is deepface's `load_model` code with its
imports turned into arguments: pass `tf_keras` and its own
`tf_keras.layers.LocallyConnected2D` for the Keras 2 model, or `keras` and
`keras_localconn.LocallyConnected2D` for the Keras 3 one. The layers, names
and sizes are those of deepface's `FbDeepFace.py` (152x152x3 faces, three
locally connected layers, a 4096-wide F7 embedding, 8631 identities).

Run as a script (under tf-keras), it writes what the Keras 2 side of the port
test needs, with random weights since the published weights cannot be
downloaded here:

    python integration/deepface.py OUT_DIR

- ``OUT_DIR/weights.h5``: `model.save_weights`, as deepface's weights file;
- ``OUT_DIR/model.h5``: `model.save` (config and weights, legacy HDF5);
- ``OUT_DIR/embeddings.npz``: ``inputs`` (4 random faces) and ``f7``, their
  F7 embeddings computed by tf-keras.
"""

import sys

INPUT_SHAPE = (152, 152, 3)
EMBEDDING_LAYER = "F7"


def build(keras, LocallyConnected2D):  # noqa: N803 - the class deepface imports
    """The DeepFace classifier (F8 softmax over 8631 identities)."""
    layers = keras.layers
    base_model = keras.models.Sequential()
    base_model.add(
        layers.Convolution2D(
            32, (11, 11), activation="relu", name="C1", input_shape=INPUT_SHAPE
        )
    )
    base_model.add(
        layers.MaxPooling2D(pool_size=3, strides=2, padding="same", name="M2")
    )
    base_model.add(layers.Convolution2D(16, (9, 9), activation="relu", name="C3"))
    base_model.add(LocallyConnected2D(16, (9, 9), activation="relu", name="L4"))
    base_model.add(
        LocallyConnected2D(16, (7, 7), strides=2, activation="relu", name="L5")
    )
    base_model.add(LocallyConnected2D(16, (5, 5), activation="relu", name="L6"))
    base_model.add(layers.Flatten(name="F0"))
    base_model.add(layers.Dense(4096, activation="relu", name="F7"))
    base_model.add(layers.Dropout(rate=0.5, name="D0"))
    base_model.add(layers.Dense(8631, activation="softmax", name="F8"))
    return base_model


def embedding_model(keras, base_model):
    """F7, the representation deepface serves (it drops D0 and F8)."""
    return keras.models.Model(
        inputs=base_model.layers[0].input, outputs=base_model.layers[-3].output
    )


def randomize(model, seed=0):
    """Give every layer random weights that keep activations near unit scale.

    Default initializers leave the locally connected layers' outputs orders
    of magnitude small (Keras 2 counted their fans over all positions) and the
    biases zero, which would hide a mislaid bias; He-scaled kernels and
    nonzero biases make every weight count in the embeddings.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kernel, bias = weights
        # Conv (kh, kw, in, out), Dense (in, out): fan_in is all but the
        # last axis; locally connected (P, K, filters): K, per position.
        fan_in = kernel.shape[1] if kernel.ndim == 3 else np.prod(kernel.shape[:-1])
        kernel = rng.standard_normal(kernel.shape, dtype="float32")
        kernel *= np.sqrt(2.0 / fan_in, dtype="float32")
        bias = rng.uniform(-0.1, 0.1, bias.shape).astype("float32")
        layer.set_weights([kernel, bias])


def write_keras2_files(out_dir, batch=4, seed=0):
    """Build DeepFace in tf-keras and write its weights, model and embeddings."""
    import pathlib

    import numpy as np
    import tf_keras

    out_dir = pathlib.Path(out_dir)
    model = build(tf_keras, tf_keras.layers.LocallyConnected2D)
    randomize(model, seed)
    model.save_weights(out_dir / "weights.h5")
    model.save(out_dir / "model.h5", save_format="h5")
    inputs = np.random.default_rng(seed + 1).uniform(size=(batch, *INPUT_SHAPE))
    inputs = inputs.astype("float32")
    # Called eagerly: `predict` would compile Keras 2's per-position loop
    # (thousands of slices for L4) into a graph, which takes minutes.
    f7 = embedding_model(tf_keras, model)(inputs, training=False).numpy()
    np.savez(out_dir / "embeddings.npz", inputs=inputs, f7=f7)


if __name__ == "__main__":
    write_keras2_files(sys.argv[1])
