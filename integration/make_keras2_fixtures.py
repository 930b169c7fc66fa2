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

The second part writes `keras2_fixtures/formats/<model>/`: each model in
every format a Keras 2 user may hold (`full.h5`, `weights.h5`, `model.keras`,
`model.weights.h5`, `savedmodel/`; see `SAVE_FORMATS`) with its `data.npz`,
for locally connected layers at the top level, in a nested model, in
`TimeDistributed` and in user layer classes (ported to Keras 3 in
`keras2_custom_layers.py`), implementations 1, 2 and 3, both data formats;
plus a genomic-style and a face-style model and two files the import must
refuse. `formats/MANIFEST.json` describes them. SavedModel files are not
byte-reproducible (TensorFlow stamps them), so rewrite only the part needed.

    nox -s fixtures                 # regenerate everything
    python integration/make_keras2_fixtures.py --out DIR [--only formats]
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


# --------------------------------------------------------------------------
# Every save format: integration/keras2_fixtures/formats/<model>/
# --------------------------------------------------------------------------

# file -> how Keras 2 wrote it (tf-keras picks the format from the name)
SAVE_FORMATS = {
    "full.h5": 'model.save(path, save_format="h5")',
    "weights.h5": "model.save_weights(path): legacy weights-only HDF5",
    "model.keras": "model.save(path): the tf-keras 2.13+ zip",
    "model.weights.h5": "model.save_weights(path): the v3 weights format",
    "savedmodel": 'model.save(path, save_format="tf"): a TensorFlow SavedModel',
}
SHORT_DATA_FORMAT = {"channels_last": "cl", "channels_first": "cf"}
# The user layer classes below, as their configs may name them.
CUSTOM_CLASSES = ("LocalBlock", "ResidualLocalBlock")


@functools.cache  # registered once: tf-keras refuses a second registration
def _user_layer_classes():
    """Keras 2 user layers holding a LocallyConnected1D.

    Defined here, not at module level, because tf-keras may be missing; the
    Keras 3 ports are in keras2_custom_layers.py (same names, arguments and
    attribute names).
    """

    @tf_keras.saving.register_keras_serializable(package="fixtures")
    class LocalBlock(layers.Layer):
        """The user's own `same` padding: ZeroPadding1D, then LocallyConnected1D."""

        def __init__(
            self,
            filters,
            kernel_size,
            implementation=1,
            data_format="channels_last",
            **kwargs,
        ):
            super().__init__(**kwargs)
            self.filters = filters
            self.kernel_size = kernel_size
            self.implementation = implementation
            self.data_format = data_format
            self.zero_padding = layers.ZeroPadding1D(
                ((kernel_size - 1) // 2, kernel_size // 2)
            )
            # ZeroPadding1D pads axis 1 only: channels_first swaps around it.
            self.swap_steps_and_channels = layers.Permute((2, 1))
            self.locally_connected = layers.LocallyConnected1D(
                filters,
                kernel_size,
                implementation=implementation,
                data_format=data_format,
            )

        def call(self, inputs):
            if self.data_format == "channels_first":
                padded = self.swap_steps_and_channels(
                    self.zero_padding(self.swap_steps_and_channels(inputs))
                )
            else:
                padded = self.zero_padding(inputs)
            return self.locally_connected(padded)

        def get_config(self):
            return {
                **super().get_config(),
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "implementation": self.implementation,
                "data_format": self.data_format,
            }

    @tf_keras.saving.register_keras_serializable(package="fixtures")
    class ResidualLocalBlock(LocalBlock):
        """A LocalBlock whose input is added to its output (filters = channels)."""

        def call(self, inputs):
            return inputs + super().call(inputs)

    return LocalBlock, ResidualLocalBlock


def top_level_model(implementation, data_format):
    """A functional model with an LC2D at its top level."""
    padding = "valid" if implementation == 1 else "same"  # Keras 2 refused 1+same
    inputs = tf_keras.Input(input_shape(2, data_format))
    x = layers.LocallyConnected2D(
        2,
        (3, 2),
        padding=padding,
        data_format=data_format,
        implementation=implementation,
        name="lc2d",
    )(inputs)
    outputs = layers.Dense(2, name="dense")(layers.Flatten(name="flatten")(x))
    return tf_keras.Model(inputs, outputs, name="top")


def nested_model_of_two(implementation, data_format):
    """A functional model calling a nested Sequential of two LC2D layers."""
    padding = "valid" if implementation == 1 else "same"
    inner = tf_keras.Sequential(
        [
            tf_keras.Input(input_shape(2, data_format)),
            layers.LocallyConnected2D(
                2,
                (2, 2),
                padding=padding,
                data_format=data_format,
                implementation=implementation,
                activation="relu",
                name="lc2d_a",
            ),
            layers.LocallyConnected2D(
                2,
                (2, 1),
                strides=2,
                data_format=data_format,
                implementation=implementation,
                name="lc2d_b",
            ),
            layers.Flatten(name="flatten"),
        ],
        name="inner",
    )
    inputs = tf_keras.Input(input_shape(2, data_format))
    outputs = layers.Dense(2, name="dense")(inner(inputs))
    return tf_keras.Model(inputs, outputs, name="outer")


def time_distributed_model(implementation, data_format):
    """TimeDistributed(LocallyConnected1D) over (batch, time, steps, channels)."""
    padding = "valid" if implementation == 1 else "same"
    steps_and_channels = (6, 2) if data_format == "channels_last" else (2, 6)
    inputs = tf_keras.Input((3, *steps_and_channels))
    outputs = layers.TimeDistributed(
        layers.LocallyConnected1D(
            2,
            2,
            padding=padding,
            data_format=data_format,
            implementation=implementation,
            name="lc1d",
        ),
        name="time_distributed",
    )(inputs)
    return tf_keras.Model(inputs, outputs, name="wrapped")


def custom_layer_model(implementation, data_format):
    """A functional model calling a user layer that holds an LC1D."""
    local_block, _ = _user_layer_classes()
    steps_and_channels = (6, 2) if data_format == "channels_last" else (2, 6)
    inputs = tf_keras.Input(steps_and_channels)
    x = local_block(3, 2, implementation, data_format, name="local_block")(inputs)
    outputs = layers.Dense(2, name="dense")(layers.Flatten(name="flatten")(x))
    return tf_keras.Model(inputs, outputs, name="custom")


def genomic_model():
    """Genomic prediction: residual LC1D blocks (implementation 3) over markers."""
    _, residual_local_block = _user_layer_classes()
    inputs = tf_keras.Input((64, 1), name="markers")
    x = inputs
    for kernel_size in (2, 3, 4, 5):
        x = residual_local_block(1, kernel_size, 3, name=f"block_k{kernel_size}")(x)
    outputs = layers.Dense(1, name="phenotype")(layers.Flatten(name="flatten")(x))
    return tf_keras.Model(inputs, outputs, name="genomic")


def face_model():
    """Face-style: Conv2D, a nested Sequential of LC2D (impl 1, 2, 3), Dense.

    Compiled, so that its full-model files carry a training config.
    """
    local = tf_keras.Sequential(
        [
            tf_keras.Input((6, 6, 2)),
            layers.LocallyConnected2D(2, 2, implementation=1, name="l4"),
            layers.LocallyConnected2D(
                2, 2, strides=2, padding="same", implementation=2, name="l5"
            ),
            layers.LocallyConnected2D(2, 2, implementation=3, name="l6"),
        ],
        name="locally_connected",
    )
    inputs = tf_keras.Input((8, 8, 1), name="face")
    x = local(layers.Conv2D(2, 3, activation="relu", name="c1")(inputs))
    outputs = layers.Dense(3, name="f8")(layers.Flatten(name="flatten")(x))
    model = tf_keras.Model(inputs, outputs, name="face")
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss="mse")
    return model


def format_models():
    """(name, description, build) for every model of the formats folder."""
    for nesting, rank, build in (
        ("top", 2, top_level_model),
        ("nested", 2, nested_model_of_two),
        ("wrapped", 1, time_distributed_model),
        ("custom", 1, custom_layer_model),
    ):
        for implementation, data_format in itertools.product(
            (1, 2, 3), SHORT_DATA_FORMAT
        ):
            short = SHORT_DATA_FORMAT[data_format]
            description = {
                "nesting": nesting,
                "rank": rank,
                "implementations": [implementation],
                "data_format": data_format,
            }
            yield (
                f"{nesting}_lc{rank}d_impl{implementation}_{short}",
                description,
                functools.partial(build, implementation, data_format),
            )
    channels_last = {"data_format": "channels_last"}
    yield (
        "genomic",
        {"nesting": "custom", "rank": 1, "implementations": [3], **channels_last},
        genomic_model,
    )
    yield (
        "face",
        {"nesting": "nested", "rank": 2, "implementations": [1, 2, 3], **channels_last},
        face_model,
    )


def custom_class_names(config):
    """Every class name under which `config` refers to a user layer class."""
    found = set()
    if isinstance(config, dict):
        for key in ("class_name", "registered_name"):
            value = config.get(key)
            if isinstance(value, str) and value.endswith(CUSTOM_CLASSES):
                found.add(value)
        for value in config.values():
            found |= custom_class_names(value)
    elif isinstance(config, list):
        for value in config:
            found |= custom_class_names(value)
    return found


def saved_configs(directory):
    """format -> the model config each full-model file holds (for class names)."""
    import zipfile

    import h5py
    from tf_keras.protobuf import saved_metadata_pb2

    configs = {}
    if (directory / "full.h5").is_file():
        with h5py.File(directory / "full.h5", "r") as file:
            configs["full.h5"] = json.loads(file.attrs["model_config"])
    if (directory / "model.keras").is_file():
        with zipfile.ZipFile(directory / "model.keras") as archive:
            configs["model.keras"] = json.loads(archive.read("config.json"))
    if (directory / "savedmodel").is_dir():
        metadata = saved_metadata_pb2.SavedMetadata()
        metadata.ParseFromString(
            (directory / "savedmodel" / "keras_metadata.pb").read_bytes()
        )
        configs["savedmodel"] = [json.loads(node.metadata) for node in metadata.nodes]
    return configs


def save_every_format(model, directory):
    """Write `model` in each of SAVE_FORMATS; {file: error} for those refused."""
    saves = {
        "full.h5": lambda path: model.save(path, save_format="h5"),
        "weights.h5": model.save_weights,
        "model.keras": model.save,
        "model.weights.h5": model.save_weights,
        "savedmodel": lambda path: model.save(path, save_format="tf"),
    }
    refused = {}
    for file, save in saves.items():
        try:
            save(str(directory / file))
        except Exception as error:  # noqa: BLE001 - recorded in the manifest
            refused[file] = f"{type(error).__name__}: {error}"
    return refused


def write_format_model(out, name, description, build, rng):
    import shutil

    tf_keras.backend.clear_session()
    model = build()
    fill_weights(model, rng)
    shape = model.input_shape[1:]
    inputs = rng.standard_normal((BATCH, *shape)).astype("float32")
    outputs = model.predict(inputs, verbose=0)
    directory = out / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    refused = save_every_format(model, directory)
    np.savez(directory / "data.npz", inputs=inputs, outputs=outputs)
    configs = saved_configs(directory)
    return {
        "name": name,
        **description,
        "input_shape": list(shape),
        "files": sorted(p.name for p in directory.iterdir()),
        "custom_class_names": {
            file: sorted(custom_class_names(config))
            for file, config in configs.items()
            if custom_class_names(config)
        },
        "refused_by_keras2": refused,
    }


def write_bad_inputs(out):
    """Files the import must refuse with a clear error."""
    import tensorflow as tf

    tf_keras.backend.clear_session()
    (out / "unrelated").mkdir(parents=True, exist_ok=True)
    inputs = tf_keras.Input((3,))
    unrelated = tf_keras.Model(inputs, layers.Dense(2, name="dense")(inputs))
    unrelated.save(out / "unrelated" / "model.keras")

    module = tf.Module()
    module.variable = tf.Variable([1.0, 2.0], name="variable")
    tf.saved_model.save(module, str(out / "no_keras_metadata"))
    return [
        {
            "name": "unrelated",
            "files": ["model.keras"],
            "what": "a tf-keras .keras file of a Dense-only model (no LC layer)",
        },
        {
            "name": "no_keras_metadata",
            "files": ["saved_model.pb", "variables"],
            "what": "a tf.saved_model.save of a tf.Module: no Keras metadata",
        },
    ]


def write_format_fixtures(out):
    """`out/<model>/` in every save format, `out/MANIFEST.json` listing them."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tf_keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    models = [
        write_format_model(out, name, description, build, rng)
        for name, description, build in format_models()
    ]
    manifest = {
        "made_with": f"tf_keras {tf_keras.__version__}",
        "seed": SEED,
        "formats": {**SAVE_FORMATS, "data.npz": "inputs, and the Keras 2 outputs"},
        "models": models,
        "bad_inputs": write_bad_inputs(out),
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(models)} models in every format under {out}, {size} bytes")


def write_single_layer_fixtures(out):
    """The `.h5` fixtures at the top of `out`: one file per model."""
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
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{len(written)} fixtures ({len(refused)} refused by Keras 2), {size} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=FIXTURES)
    parser.add_argument(
        "--only",
        choices=("single", "formats"),
        help="write only the single-format `.h5` files at the top of --out, "
        "or only the every-format folder --out/formats (default: both)",
    )
    arguments = parser.parse_args()
    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    if arguments.only != "formats":
        write_single_layer_fixtures(out)
    if arguments.only != "single":
        write_format_fixtures(out / "formats")


if __name__ == "__main__":
    main()
