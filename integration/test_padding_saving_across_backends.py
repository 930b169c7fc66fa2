"""Circular and explicit padding survive `.keras` files across backends."""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

from integration.keras3_models import load_and_compare
from integration.test_saving_across_backends import (
    NEWEST_WRITER,
    SAVED_UNDER,
    _installed_backends,
)

ROOT = pathlib.Path(__file__).parent.parent
FIXTURES = ROOT / "integration" / "keras3_fixtures"


def _run(backend, *args):
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-m", "integration.padding_models", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.needs_keras(NEWEST_WRITER)
@pytest.mark.parametrize("saved_under", SAVED_UNDER)
def test_padding_model_saved_under_each_backend_predicts_the_same_here(saved_under):
    """Committed files written by `nox -s keras3_fixtures` under each backend."""
    difference = load_and_compare(
        FIXTURES / f"padding_model_{saved_under}.keras",
        FIXTURES / f"padding_model_{saved_under}.npz",
    )
    assert difference < 1e-5, (saved_under, keras.backend.backend(), difference)


def test_padding_model_saved_here_loads_under_every_installed_backend(tmp_path):
    current = keras.backend.backend()
    _run(current, "save", tmp_path)
    for backend in _installed_backends():
        output = _run(
            backend,
            "load",
            tmp_path / f"padding_model_{current}.keras",
            tmp_path / f"padding_model_{current}.npz",
        )
        difference = float(output.strip().rsplit("=", 1)[1])
        assert difference < 1e-5, (current, backend, difference)
