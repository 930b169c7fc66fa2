"""The code on the documentation's example pages runs and does what it says."""

import pathlib
import re

import numpy as np
import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def _run_page(page):
    namespace = {"__name__": "__docs__"}
    for block in _python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102
    return namespace


@pytest.mark.training
def test_encoder_decoder_page_reconstructs_the_fields(capsys):
    page = DOCS / "encoder-decoder.md"
    assert _python_blocks(page), f"no python block in {page}"
    namespace = _run_page(page)
    assert tuple(namespace["model"].output_shape) == (None, 16, 16, 1)
    assert tuple(namespace["code"].shape) == (None, 4, 4, 4)
    # Learned: far below the variance that predicting zeros would leave.
    assert namespace["test_mse"] < 0.02 * float(np.var(namespace["test"]))
    assert "test MSE" in capsys.readouterr().out
