"""Write real Keras 2 model files for the import tests (`nox -s fixtures`).

Needs tf-keras (the Keras 2 API). Every file under `integration/keras2_fixtures/`
is made here: for each model a `<name>.h5` (a full Keras 2 model, or weights
only for `weights_only_*`) and a `<name>.npz` holding `inputs` and the Keras 2
model's `outputs` on them. `MANIFEST.json` lists what was written and the
combinations Keras 2 itself refused, with its error message.

The single-layer matrix is rank (1D, 2D) x implementation (1, 2, 3) x data
format x padding (valid, same) x strides (1, 2). Kernel sizes are even on at
least one axis and input sizes mix odd and even, so that Keras 2's own split
of `same` padding (which differs from Keras 3's) shows in the outputs. Every
weight, the masked-out entries of implementation 2 included, is drawn from a
seeded generator so that no conversion mistake can hide behind a zero.

    nox -s fixtures                 # regenerate everything
    python integration/make_keras2_fixtures.py --out DIR
"""

import argparse
import functools
import itertools
import json
import os
import pathlib

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

try:
    import tf_keras
    from tf_keras import layers
except ImportError:  # collected by pytest's doctests in a session without it
    tf_keras = layers = None

FIXTURES = pathlib.Path(__file__).parent / "keras2_fixtures"
SEED = 20261125
BATCH = 2

# rank -> (input spatial shape, channels, kernel_size, filters)
GEOMETRY = {
    1: ((7,), 2, (2,), 3),
    2: ((5, 6), 2, (3, 2), 2),
}


def fill_weights(model, rng):
    """Overwrite every weight of `model` with seeded normal values."""
    for layer in model.layers:
        values = layer.get_weights()
        if values:
            layer.set_weights(
                [0.5 * rng.standard_normal(v.shape).astype(v.dtype) for v in values]
            )


def input_shape(rank, data_format):
    spatial, channels, _, _ = GEOMETRY[rank]
    if data_format == "channels_last":
        return (*spatial, channels)
    return (channels, *spatial)


def single_layer_model(rank, implementation, data_format, padding, strides):
    _, _, kernel_size, filters = GEOMETRY[rank]
    inputs = tf_keras.Input(input_shape(rank, data_format))
    locally_connected = getattr(layers, f"LocallyConnected{rank}D")
    outputs = locally_connected(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        data_format=data_format,
        implementation=implementation,
        name=f"lc{rank}d",
    )(inputs)
    return tf_keras.Model(inputs, outputs)


def stacked_model():
    """Three LC2D layers in a Sequential, one per implementation.

    The first layer takes `input_shape=` (no `Input`), so the saved config
    carries Keras 2's `batch_input_shape` in the layer's own config.
    """
    return tf_keras.Sequential(
        [
            layers.LocallyConnected2D(
                3,
                (2, 3),
                padding="same",
                implementation=2,
                activation="relu",
                input_shape=(8, 7, 2),
            ),
            layers.LocallyConnected2D(
                3, (2, 2), strides=2, padding="same", implementation=3
            ),
            layers.LocallyConnected2D(2, (2, 1), implementation=1),
        ]
    )


def mixed_2d_model():
    """Functional: Conv2D, LC2D (tanh, channels_first), Flatten, Dense; compiled."""
    inputs = tf_keras.Input((9, 8, 1))
    x = layers.Conv2D(3, 3, activation="relu")(inputs)
    x = layers.Permute((3, 1, 2))(x)
    x = layers.LocallyConnected2D(
        4,
        (2, 3),
        strides=2,
        padding="same",
        data_format="channels_first",
        implementation=2,
        activation="tanh",
        kernel_regularizer=tf_keras.regularizers.L2(1e-4),
        bias_initializer=tf_keras.initializers.RandomNormal(stddev=0.1, seed=1),
    )(x)
    x = layers.Flatten()(x)
    x = layers.Dense(8, activation="relu")(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = tf_keras.Model(inputs, outputs, name="mixed_2d")
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def mixed_1d_model():
    """Sequential: Conv1D, LC1D (impl 3, same, strides 2, relu), pooling, Dense."""
    return tf_keras.Sequential(
        [
            tf_keras.Input((12, 2)),
            layers.Conv1D(4, 3, padding="same"),
            layers.LocallyConnected1D(
                3, 4, strides=2, padding="same", implementation=3, activation="relu"
            ),
            layers.MaxPooling1D(2),
            layers.Flatten(),
            layers.Dense(2),
        ]
    )


def weights_only_model():
    """The architecture `test_keras2_import` rebuilds with keras_localconn."""
    inputs = tf_keras.Input((6, 6, 2))
    x = layers.LocallyConnected2D(3, 3, implementation=2, name="lc_a")(inputs)
    x = layers.LocallyConnected2D(
        2, 3, padding="same", implementation=3, activation="relu", name="lc_b"
    )(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.LocallyConnected1D(2, 3, strides=2, name="lc_c")(
        layers.Reshape((8, 4), name="reshape")(x)
    )
    outputs = layers.Dense(3, name="dense")(layers.Flatten(name="flatten_2")(x))
    return tf_keras.Model(inputs, outputs, name="weights_only")


def nested_model():
    """An LC layer inside a nested model: a structure the import refuses."""
    inner = tf_keras.Sequential(
        [tf_keras.Input((6, 2)), layers.LocallyConnected1D(2, 3)], name="inner"
    )
    inputs = tf_keras.Input((6, 2))
    outputs = layers.Dense(2)(inner(inputs))
    return tf_keras.Model(inputs, outputs, name="outer")


def write(out, name, build, rng, weights_only=False):
    tf_keras.backend.clear_session()  # layer names restart in every file
    model = build()
    fill_weights(model, rng)
    shape = model.input_shape[1:]
    inputs = rng.standard_normal((BATCH, *shape)).astype("float32")
    outputs = model.predict(inputs, verbose=0)
    if weights_only:
        model.save_weights(out / f"{name}.h5")
    else:
        model.save(out / f"{name}.h5", save_format="h5")
    np.savez(out / f"{name}.npz", inputs=inputs, outputs=outputs)
    return {"name": name, "weights_only": weights_only, "input_shape": list(shape)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=FIXTURES)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    for stale in itertools.chain(out.glob("*.h5"), out.glob("*.npz")):
        stale.unlink()
    tf_keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)

    written, refused = [], []
    matrix = itertools.product(
        (1, 2),
        (1, 2, 3),
        ("channels_last", "channels_first"),
        ("valid", "same"),
        (1, 2),
    )
    for rank, implementation, data_format, padding, strides in matrix:
        short = "cl" if data_format == "channels_last" else "cf"
        name = f"lc{rank}d_impl{implementation}_{short}_{padding}_s{strides}"
        build = functools.partial(
            single_layer_model, rank, implementation, data_format, padding, strides
        )
        try:
            written.append(write(out, name, build, rng))
        except ValueError as error:  # Keras 2 refused the combination
            refused.append({"name": name, "error": str(error)})

    written.append(write(out, "stacked_lc2d", stacked_model, rng))
    written.append(write(out, "mixed_conv_lc2d_dense", mixed_2d_model, rng))
    written.append(write(out, "mixed_conv_lc1d_dense", mixed_1d_model, rng))
    written.append(
        write(out, "weights_only_lc", weights_only_model, rng, weights_only=True)
    )
    written.append(write(out, "nested_lc1d", nested_model, rng))

    manifest = {
        "made_with": f"tf_keras {tf_keras.__version__}",
        "seed": SEED,
        "fixtures": written,
        "refused_by_keras2": refused,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{len(written)} fixtures ({len(refused)} refused by Keras 2), {size} bytes")


if __name__ == "__main__":
    main()
