"""TensorFlow `tf.distribute.MirroredStrategy` training of locally connected layers.

A model built and compiled under `MirroredStrategy` holds one copy of every
variable per device; `fit` splits each batch between them and sums their
gradients. Two devices are needed, which TensorFlow can only be given before
it starts: two logical CPU devices (or two GPUs where there are) are
configured in a child process (this file run as a script). It trains the
model from the same weights on one device and under the strategy, saves the
distributed model as `.keras`, loads it outside the strategy, and writes what
the tests below check.

The module imports no backend at its top: the child configures TensorFlow's
devices before anything imports it, and under the other backends the tests
are deselected without importing TensorFlow.
"""

import contextlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from integration import data_parallel
from integration.data_parallel import ROOT, TOLERANCE, max_difference

SAMPLES = 16
BATCH = 8  # global: each of the two replicas gets 4 per step
EPOCHS = 2  # of 2 steps
LEARNING_RATE = 1.0


def _two_devices(tf):
    """Device names for the strategy; configures logical devices if needed."""
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) >= 2:
        return ["/gpu:0", "/gpu:1"]
    if gpus:
        # Two logical devices on one GPU are not what two GPUs run (their
        # NCCL all-reduce): with one GPU, both runs stay on the CPU.
        tf.config.set_visible_devices([], "GPU")
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    return ["/cpu:0", "/cpu:1"]


def _child_main(out_dir):
    import tensorflow as tf

    devices = _two_devices(tf)
    # TF32 (on GPUs from Ampere on) would round the differently grouped sums
    # of the two runs far above TOLERANCE.
    tf.config.experimental.enable_tensor_float_32_execution(False)

    import keras

    out_dir = pathlib.Path(out_dir)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, 6, 6, 2)).astype("float32")
    y = rng.standard_normal((SAMPLES, 6, 6, 2)).astype("float32")
    paths_and_shapes = [(v.path, tuple(v.shape)) for v in data_parallel.model().weights]
    initial = data_parallel.initial_weights([s for _, s in paths_and_shapes], rng)

    def run(strategy):
        keras.backend.clear_session()
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = data_parallel.model()
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
        history = model.fit(
            x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0
        )
        kernel = model.get_layer("lc2d").kernel.value
        return model, {
            "replicas": model.distribute_strategy.num_replicas_in_sync,
            "kernel_variable": type(kernel).__name__,
            "kernel_copies_on": sorted(
                v.device for v in getattr(kernel, "values", [kernel])
            ),
            "losses": history.history["loss"],
            "weights": {
                v.path: keras.ops.convert_to_numpy(v.value).tolist()
                for v in model.weights
            },
            "predictions": model.predict(x, batch_size=BATCH, verbose=0).tolist(),
        }

    _, single = run(None)
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    model, mirrored = run(strategy)

    path = out_dir / "mirrored.keras"
    model.save(path)
    keras.backend.clear_session()
    loaded = keras.saving.load_model(path)
    kernel = loaded.get_layer("lc2d").kernel.value
    reloaded = {
        "kernel_variable": type(kernel).__name__,
        "weights": {
            v.path: keras.ops.convert_to_numpy(v.value).tolist() for v in loaded.weights
        },
        "predictions": loaded.predict(x, batch_size=BATCH, verbose=0).tolist(),
    }

    report = {
        "strategy_devices": devices,
        "initial_weights": {
            path: w.tolist() for (path, _), w in zip(paths_and_shapes, initial)
        },
        "single_device": single,
        "mirrored": mirrored,
        "reloaded": reloaded,
    }
    (out_dir / "report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("mirrored")
    env = data_parallel.child_environment(
        KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2"
    )
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), str(out_dir)]
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads((out_dir / "report.json").read_text())


@pytest.mark.backends("tensorflow")
@pytest.mark.training
def test_mirrored_strategy_keeps_a_copy_of_each_kernel_on_both_devices(report):
    mirrored = report["mirrored"]
    assert mirrored["replicas"] == 2
    assert mirrored["kernel_variable"] == "MirroredVariable"
    kind = report["strategy_devices"][0].split(":")[0].strip("/").upper()
    assert mirrored["kernel_copies_on"] == [
        f"/job:localhost/replica:0/task:0/device:{kind}:{index}" for index in (0, 1)
    ]
    assert report["single_device"]["replicas"] == 1


@pytest.mark.backends("tensorflow")
@pytest.mark.training
def test_mirrored_fit_losses_weights_and_predictions_equal_one_device(report):
    single, mirrored = report["single_device"], report["mirrored"]
    # Training moved the weights, so the comparison below compares something.
    assert max_difference(single["weights"], report["initial_weights"]) > 1e-2

    assert len(mirrored["losses"]) == EPOCHS
    np.testing.assert_allclose(
        mirrored["losses"], single["losses"], rtol=0, atol=TOLERANCE
    )
    assert set(mirrored["weights"]) == {
        "lc2d/kernel",
        "lc2d/bias",
        "lc2dt/kernel",
        "lc2dt/bias",
    }
    for path, weight in single["weights"].items():
        np.testing.assert_allclose(
            mirrored["weights"][path], weight, rtol=0, atol=TOLERANCE, err_msg=path
        )
    np.testing.assert_allclose(
        mirrored["predictions"], single["predictions"], rtol=0, atol=TOLERANCE
    )


@pytest.mark.backends("tensorflow")
@pytest.mark.training
def test_keras_file_saved_under_the_strategy_loads_outside_it_and_predicts_the_same(
    report,
):
    mirrored, reloaded = report["mirrored"], report["reloaded"]
    assert reloaded["kernel_variable"] != "MirroredVariable"
    # The file holds the trained weights exactly; the forward pass on one
    # device may round differently from the mirrored one.
    assert max_difference(reloaded["weights"], mirrored["weights"]) == 0.0
    np.testing.assert_allclose(
        reloaded["predictions"], mirrored["predictions"], rtol=0, atol=TOLERANCE
    )


if __name__ == "__main__":
    _child_main(*sys.argv[1:])
