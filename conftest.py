"""Shared test configuration: backend report and backend-aware selection.

Markers (registered in pyproject.toml):

- ``@pytest.mark.training``: needs gradients / ``fit``; deselected under the
  inference-only numpy backend.
- ``@pytest.mark.backends("tensorflow", ...)``: runs only under the named
  backends; deselected (not skipped) elsewhere.
- ``@pytest.mark.needs_keras("3.13.0")``: needs at least that Keras (files
  an older one cannot read, features it lacks); deselected under an older
  one.

A test with nothing to check under a backend or a Keras carries one of these;
it never passes by returning early.
"""

import importlib.util
import os

import keras

BACKEND = keras.backend.backend()

# Modules that need packages only some sessions install: left out of the
# collection (not skipped) where those packages are missing.
_NEEDS = {
    "integration/test_deepface.py": "tf_keras",  # tests-tensorflow, export
    "integration/test_export_formats.py": "onnxruntime",  # export
    "integration/test_keras2_savedmodel.py": "tensorflow",  # tests-tensorflow, export
    "integration/test_keras2_savedmodel_reader.py": "tf_keras",  # writes with it
}
collect_ignore = [
    path for path, module in _NEEDS.items() if importlib.util.find_spec(module) is None
]


def _devices():
    try:
        if BACKEND == "jax":
            import jax

            return ", ".join(str(d) for d in jax.devices())
        if BACKEND == "torch":
            import torch

            if torch.cuda.is_available():
                return f"cuda ({torch.cuda.get_device_name(0)})"
            return "cpu"
        if BACKEND == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return ", ".join(g.name for g in gpus) or "cpu"
    except Exception as error:  # noqa: BLE001 - the header must never fail
        return f"unknown ({error})"
    return "cpu"


def _backend_version():
    if BACKEND == "numpy":
        import numpy

        return f"numpy {numpy.__version__}"
    module = __import__(BACKEND)
    return f"{BACKEND} {module.__version__}"


def pytest_report_header(config):
    header = (
        f"keras {keras.__version__}, backend {_backend_version()}, "
        f"devices: {_devices()}, KERAS_BACKEND={os.environ.get('KERAS_BACKEND')}"
    )
    if collect_ignore:
        header += (
            f"\nnot collected here (packages missing): {', '.join(collect_ignore)}"
        )
    return header


def _version(text):
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def pytest_collection_modifyitems(config, items):
    selected, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("backends")
        keep = marker is None or BACKEND in marker.args
        if BACKEND == "numpy" and item.get_closest_marker("training"):
            keep = False
        needs = item.get_closest_marker("needs_keras")
        if needs is not None and _version(keras.__version__) < _version(needs.args[0]):
            keep = False
        (selected if keep else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
