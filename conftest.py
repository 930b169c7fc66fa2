"""Shared test configuration: backend report and backend-aware selection.

Markers (registered in pyproject.toml):

- ``@pytest.mark.training``: needs gradients / ``fit``; deselected under the
  inference-only numpy backend.
- ``@pytest.mark.backends("tensorflow", ...)``: runs only under the named
  backends; deselected (not skipped) elsewhere.
"""

import os

import keras

BACKEND = keras.backend.backend()


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
    return (
        f"keras {keras.__version__}, backend {_backend_version()}, "
        f"devices: {_devices()}, KERAS_BACKEND={os.environ.get('KERAS_BACKEND')}"
    )


def pytest_collection_modifyitems(config, items):
    selected, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("backends")
        keep = marker is None or BACKEND in marker.args
        if BACKEND == "numpy" and item.get_closest_marker("training"):
            keep = False
        (selected if keep else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
