"""A `.keras` file saved under one backend loads under every other one."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import keras
import pytest

from integration.keras3_models import MODELS, load_and_compare

HERE = pathlib.Path(__file__).parent
FIXTURES = HERE / "keras3_fixtures"
SCRIPT = HERE / "keras3_models.py"
SAVED_UNDER = ("tensorflow", "jax", "torch")


def _installed_backends():
    """Backends usable in this virtualenv.

    Keras' numpy backend itself imports jax (for FFTs) and scipy.
    """
    requirements = {
        "tensorflow": ["tensorflow"],
        "jax": ["jax"],
        "torch": ["torch"],
        "numpy": ["jax", "scipy"],
    }
    return [
        name
        for name, modules in requirements.items()
        if all(importlib.util.find_spec(m) is not None for m in modules)
    ]


def _run(backend, *args):
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _written_by(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("metadata.json"))["keras_version"]


# Keras reads files written by its own and older releases, not newer ones
# (their configs may hold arguments an older release does not know). The
# committed files come from a recent Keras; where the running Keras is older
# (`tests-oldest`), conftest.py deselects the test that reads them.
NEWEST_WRITER = max(
    (_written_by(path) for path in FIXTURES.glob("*.keras")),
    key=lambda text: tuple(int(p) for p in text.split(".")[:3] if p.isdigit()),
)


@pytest.mark.needs_keras(NEWEST_WRITER)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("saved_under", SAVED_UNDER)
def test_model_saved_under_each_backend_predicts_the_same_here(saved_under, model):
    """Committed files written by `nox -s keras3_fixtures` under each backend."""
    difference = load_and_compare(
        FIXTURES / f"{model}_{saved_under}.keras",
        FIXTURES / f"{model}_{saved_under}.npz",
    )
    assert difference < 1e-5, (model, saved_under, keras.backend.backend(), difference)


@pytest.mark.training
def test_model_saved_here_loads_under_every_installed_backend(tmp_path):
    """Live round trip: save in a subprocess, load in one per installed backend."""
    current = keras.backend.backend()
    _run(current, "save", tmp_path)
    loaded_under = _installed_backends()
    assert current in loaded_under
    for name in MODELS:
        model = tmp_path / f"{name}_{current}.keras"
        data = tmp_path / f"{name}_{current}.npz"
        for backend in loaded_under:
            output = _run(backend, "load", model, data)
            difference = float(output.strip().rsplit("=", 1)[1])
            assert difference < 1e-5, (name, current, backend, difference)
