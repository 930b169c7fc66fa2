"""`keras.distribution` with locally connected layers.

The layout helper (`keras_localconn.distribution.positions_layout_map`) is
pure bookkeeping and is tested in process on every backend. The distributed
runs need JAX with 8 simulated CPU devices, which must be configured before
JAX starts: they run once, in a child process (this file run as a script),
and the tests below check what it reports.
"""

import contextlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras.distribution import DeviceMesh, LayoutMap

from keras_localconn import (
    LocallyConnected1D,
    LocallyConnected1DTranspose,
    LocallyConnected2D,
    LocallyConnected2DTranspose,
    LocallyConnected3D,
)
from keras_localconn.distribution import positions_layout_map

# Float32 sums regrouped across devices differ in the last bits only.
TOLERANCE = 1e-5


def _mesh(shape=(2, 4), axis_names=("batch", "model"), count=8):
    # A DeviceMesh only records device names until a backend uses it.
    return DeviceMesh(shape, axis_names, [f"device{i}" for i in range(count)])


def _axes(layout_map):
    return {path: layout_map[path].axes for path in layout_map}


def _two_layer_model():
    """lc2d: kernel (12, 18, 8), bias (6, 2, 8); lc1d: (8, 40, 4), (8, 4);
    lc1dt (transposed, 8 input positions): (8, 6, 4), (10, 2)."""
    inputs = keras.Input((8, 4, 2))
    x = LocallyConnected2D(8, 3, activation="tanh", name="lc2d")(inputs)
    x = keras.layers.Reshape((12, 8))(x)
    x = LocallyConnected1D(4, 5, activation="tanh", name="lc1d")(x)
    x = LocallyConnected1DTranspose(2, 3, name="lc1dt")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="net")


# --------------------------------------------------------------------------
# The helper, in process, on every backend
# --------------------------------------------------------------------------


def test_layout_map_from_model_shards_kernels_over_positions_and_divisible_biases():
    layout_map = positions_layout_map(_mesh(), _two_layer_model())

    assert _axes(layout_map) == {
        "lc2d/kernel": ("model", None, None),
        # lc2d's bias (6, 2, 8): 4 devices do not divide 6, so it stays
        # replicated (no entry).
        "lc1d/kernel": ("model", None, None),
        "lc1d/bias": ("model", None),
        # The transposed layer's kernel: one matrix per input position. Its
        # bias (10, 2) is per output position; 4 does not divide 10.
        "lc1dt/kernel": ("model", None, None),
    }
    assert layout_map["lc2d/kernel"].device_mesh is layout_map.device_mesh


def test_layout_map_from_model_finds_layers_in_nested_models():
    inner = keras.Sequential(
        [keras.Input((6, 6, 6, 1)), LocallyConnected3D(2, 3, name="lc3d")],
        name="inner",
    )
    outer = keras.Sequential([keras.Input((6, 6, 6, 1)), inner], name="outer")

    layout_map = positions_layout_map(_mesh((8,), ("model",)), outer)

    # Kernel (64, 27, 2) split in 8; bias (4, 4, 4, 2) left replicated.
    assert _axes(layout_map) == {"inner/lc3d/kernel": ("model", None, None)}


def test_layout_map_from_model_finds_layers_in_custom_layers_and_wrappers():
    class Block(keras.layers.Layer):
        """A custom layer holding a locally connected layer as an attribute."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.local = LocallyConnected1D(4, 3, name="lc_in_block")

        def build(self, input_shape):
            self.local.build(input_shape)

        def call(self, inputs):
            return self.local(inputs)

        def compute_output_shape(self, input_shape):
            return self.local.compute_output_shape(input_shape)

    inputs = keras.Input((5, 10, 2))  # (time, steps, channels)
    x = keras.layers.TimeDistributed(
        LocallyConnected1D(2, 3, name="lc_in_wrapper"), name="per_step"
    )(inputs)
    x = keras.layers.Reshape((5, 16))(x)
    outputs = Block(name="block")(x)
    model = keras.Model(inputs, outputs, name="net")

    # Kernels (8, 6, 2) in the wrapper and (3, 48, 4) in the custom layer.
    layout_map = positions_layout_map(_mesh((1,), ("model",), count=1), model)
    assert sorted(layout_map[path].axes for path in layout_map) == [
        ("model", None),
        ("model", None),
        ("model", None, None),
        ("model", None, None),
    ]
    kernels = sorted(path for path in layout_map if path.endswith("/kernel"))
    assert [path.split("/")[-2] for path in kernels] == [
        "lc_in_block",
        "lc_in_wrapper",
    ]
    # Found, hence checked: 8 devices do not divide the custom layer's 3.
    with pytest.raises(ValueError, match=r"'lc_in_block' has 3 output positions"):
        positions_layout_map(_mesh((8,), ("model",)), model)


def test_layout_map_name_pattern_selects_layers_by_path():
    layout_map = positions_layout_map(_mesh(), _two_layer_model(), name_pattern="lc1.*")

    assert set(layout_map) == {"lc1d/kernel", "lc1d/bias", "lc1dt/kernel"}


def test_layout_map_adds_to_an_existing_map_and_its_exact_paths_win_over_regexes():
    layout_map = LayoutMap(_mesh())
    layout_map[".*/kernel"] = (None, "model")

    returned = positions_layout_map(layout_map, _two_layer_model(), axis_name="batch")

    assert returned is layout_map
    assert layout_map["lc2d/kernel"].axes == ("batch", None, None)
    assert layout_map["lc1d/bias"].axes == ("batch", None)
    assert layout_map["head/kernel"].axes == (None, "model")


def test_layout_map_from_pattern_matches_automatically_named_layers_only():
    layout_map = positions_layout_map(_mesh())

    assert list(_axes(layout_map).values()) == [("model", None, None)]
    for path in (
        "locally_connected1d/kernel",
        "functional/locally_connected2d_12/kernel",
        "a/b/locally_connected3d/kernel",
        "locally_connected2d_transpose/kernel",
        "functional/locally_connected3d_transpose_2/kernel",
    ):
        assert layout_map[path].axes == ("model", None, None), path
    for path in ("dense/kernel", "locally_connected2d/bias", "conv2d/kernel"):
        assert layout_map[path] is None, path


@pytest.mark.parametrize(
    "name_pattern", ["lc1.*", "lc.d", "lc2d", "l.*2.", "lc2d|head"]
)
def test_name_pattern_selects_the_same_kernels_with_and_without_a_model(name_pattern):
    # Without a model the entry cannot check layer classes: compare the
    # locally connected kernels.
    model = _two_layer_model()
    kernels = ["lc2d/kernel", "lc1d/kernel", "lc1dt/kernel"]
    with_model = positions_layout_map(_mesh(), model, name_pattern=name_pattern)
    selected_with_model = set(kernels) & set(with_model)
    without_model = positions_layout_map(_mesh(), name_pattern=name_pattern)
    selected_without = {p for p in kernels if without_model[p] is not None}
    assert selected_without == selected_with_model


def test_name_pattern_without_a_model_must_match_the_whole_layer_path():
    layout_map = positions_layout_map(_mesh(), name_pattern="lc")
    assert layout_map["lc/kernel"].axes == ("model", None, None)
    for path in ("block_lc/kernel", "lc_2/kernel", "net/lc/kernel", "lc/bias"):
        assert layout_map[path] is None, path


def test_layout_map_rejects_a_kernel_whose_positions_the_axis_does_not_divide():
    model = keras.Sequential([keras.Input((7, 2)), LocallyConnected1D(3, 3, name="lc")])
    with pytest.raises(ValueError, match=r"'lc' has 5 output positions.*size 4"):
        positions_layout_map(_mesh(), model)


def test_layout_map_shards_a_grouped_kernel_over_its_groups():
    model = keras.Sequential(
        [
            keras.Input((10, 2)),
            LocallyConnected1D(3, 3, position_groups=2, name="lc"),  # T = 4
            LocallyConnected1D(3, 3, position_groups=3, name="odd"),  # T = 2
        ],
        name="net",
    )
    layout_map = positions_layout_map(_mesh(), model, name_pattern=r"(?:.*/)?lc")
    assert _axes(layout_map) == {
        "net/lc/kernel": ("model", None, None),
        "net/lc/bias": ("model", None),
    }
    with pytest.raises(ValueError, match=r"'odd' has 2 position groups.*size 4"):
        positions_layout_map(_mesh(), model)


def test_layout_map_rejects_a_transposed_kernel_whose_input_positions_do_not_divide():
    model = keras.Sequential(
        [keras.Input((3, 2, 2)), LocallyConnected2DTranspose(3, 2, name="lct")]
    )
    with pytest.raises(ValueError, match=r"'lct' has 6 input positions.*size 4"):
        positions_layout_map(_mesh(), model)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"axis_name": "devices"}, r"axis_name='devices'"),
        ({"model": keras.layers.Dense(2)}, "found no built locally connected"),
        ({"model": LocallyConnected1D(2, 3)}, "found no built locally connected"),
        ({"name_pattern": "nothing"}, "matching name_pattern='nothing'"),
    ],
)
def test_layout_map_rejects_bad_arguments_with_a_value_error(arguments, message):
    arguments = {"model": _two_layer_model(), **arguments}
    with pytest.raises(ValueError, match=message):
        positions_layout_map(_mesh(), **arguments)


def test_layout_map_requires_a_device_mesh_or_layout_map():
    with pytest.raises(ValueError, match="DeviceMesh or LayoutMap"):
        positions_layout_map((2, 4))


# --------------------------------------------------------------------------
# Distributed runs on 8 simulated JAX devices, in a child process
# --------------------------------------------------------------------------


def _child_main():
    """Single device, DataParallel and ModelParallel from the same start."""
    import keras.distribution as kd

    devices = kd.list_devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 4, 2)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")

    keras.utils.set_random_seed(0)
    initial_weights = _two_layer_model().get_weights()
    layout_map = positions_layout_map(
        kd.DeviceMesh((2, 4), ("batch", "model"), devices), _two_layer_model()
    )

    def describe(variable):
        sharding = variable.value.sharding
        return {
            "shape": list(variable.shape),
            "shard_shape": list(sharding.shard_shape(tuple(variable.shape))),
            "devices": len(sharding.device_set),
        }

    def run(distribution):
        keras.backend.clear_session()
        with distribution.scope() if distribution else contextlib.nullcontext():
            model = _two_layer_model()
            model.set_weights(initial_weights)
            variables = {v.path: v for v in model.weights}
            lc_paths = [p for p in variables if p.startswith("lc")]
            before = {p: describe(variables[p]) for p in lc_paths}
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
            history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
            after = {p: describe(variables[p]) for p in lc_paths}
            predictions = model.predict(x, batch_size=16, verbose=0)
        return {
            "sharding_at_build": before,
            "sharding_after_fit": after,
            "losses": history.history["loss"],
            "weights": [np.asarray(w) for w in model.get_weights()],
            "predictions": np.asarray(predictions),
        }

    single = run(None)
    runs = {
        "data_parallel": run(kd.DataParallel(devices=devices)),
        "model_parallel": run(
            kd.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
        ),
    }
    report = {
        "devices": len(devices),
        "sharded_kernel_too_large": _sharded_kernel_too_large(devices),
        "initial_weights_moved": max(
            float(np.abs(a - b).max())
            for a, b in zip(single["weights"], initial_weights)
        ),
    }
    for name, result in runs.items():
        report[name] = {
            "sharding_at_build": result["sharding_at_build"],
            "sharding_after_fit": result["sharding_after_fit"],
            "losses": result["losses"],
            "single_device_losses": single["losses"],
            "max_weight_difference": max(
                float(np.abs(a - b).max())
                for a, b in zip(result["weights"], single["weights"])
            ),
            "max_prediction_difference": float(
                np.abs(result["predictions"] - single["predictions"]).max()
            ),
        }
    print(json.dumps(report))


def _sharded_kernel_too_large(devices):
    """Building, under ModelParallel, a kernel no device can hold its share of:
    the error and what the layer holds afterwards."""
    import keras.distribution as kd

    keras.backend.clear_session()
    mesh = kd.DeviceMesh((2, 4), ("batch", "model"), devices)
    layout_map = positions_layout_map(mesh, name_pattern="huge")
    layer = LocallyConnected2D(512, 3, name="huge")  # 1.23 TB, 308 GB a shard
    try:
        with kd.ModelParallel(layout_map=layout_map, batch_dim_name="batch").scope():
            layer.build((None, 1024, 1024, 64))
    except ValueError as error:
        message = str(error)
    else:
        message = None
    return {"message": message, "built": layer.built, "weights": len(layer.weights)}


@pytest.fixture(scope="module")
def distributed_report():
    # The 8 devices are simulated CPU devices; JAX_PLATFORMS keeps the
    # single-device reference on the CPU too where JAX also sees a GPU.
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
    )
    completed = subprocess.run(
        [sys.executable, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.backends("jax")
def test_child_process_sees_eight_devices_and_training_moves_the_weights(
    distributed_report,
):
    assert distributed_report["devices"] == 8
    assert distributed_report["initial_weights_moved"] > 1e-3


@pytest.mark.backends("jax")
def test_a_sharded_kernel_no_device_can_hold_is_a_clear_error_at_build(
    distributed_report,
):
    """JAX allocates sharded variables asynchronously; the layer still reports
    the failure at build, with its sizes, and keeps no weight."""
    result = distributed_report["sharded_kernel_too_large"]
    assert result["built"] is False and result["weights"] == 0
    for part in ("'huge'", "(1044484, 576, 512)", "could not be allocated"):
        assert part in result["message"], part


@pytest.mark.backends("jax")
@pytest.mark.parametrize("stage", ["sharding_at_build", "sharding_after_fit"])
def test_model_parallel_shards_kernels_over_positions_on_the_model_axis(
    distributed_report, stage
):
    sharding = distributed_report["model_parallel"][stage]

    # Mesh (batch=2, model=4): each kernel is cut in 4 along its positions
    # axis (and each piece held by the 2 devices of the batch axis).
    assert sharding["lc2d/kernel"] == {
        "shape": [12, 18, 8],
        "shard_shape": [3, 18, 8],
        "devices": 8,
    }
    assert sharding["lc1d/kernel"] == {
        "shape": [8, 40, 4],
        "shard_shape": [2, 40, 4],
        "devices": 8,
    }
    assert sharding["lc1d/bias"]["shard_shape"] == [2, 4]
    assert sharding["lc1dt/kernel"] == {
        "shape": [8, 6, 4],
        "shard_shape": [2, 6, 4],
        "devices": 8,
    }
    # 4 divides neither lc2d's bias (6, 2, 8) nor lc1dt's (10, 2): replicated.
    assert sharding["lc2d/bias"]["shard_shape"] == [6, 2, 8]
    assert sharding["lc1dt/bias"]["shard_shape"] == [10, 2]


@pytest.mark.backends("jax")
def test_data_parallel_replicates_the_kernels_on_all_devices(distributed_report):
    for path, sharding in distributed_report["data_parallel"][
        "sharding_after_fit"
    ].items():
        assert sharding["shard_shape"] == sharding["shape"], path
        assert sharding["devices"] == 8, path


@pytest.mark.backends("jax")
@pytest.mark.parametrize("strategy", ["data_parallel", "model_parallel"])
def test_distributed_fit_and_predict_equal_the_single_device_run(
    distributed_report, strategy
):
    result = distributed_report[strategy]

    assert len(result["losses"]) == 2  # 2 epochs of 2 steps
    np.testing.assert_allclose(
        result["losses"], result["single_device_losses"], rtol=TOLERANCE
    )
    assert result["max_weight_difference"] <= TOLERANCE
    assert result["max_prediction_difference"] <= TOLERANCE


if __name__ == "__main__":
    _child_main()
