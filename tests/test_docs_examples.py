"""The code on the documentation's example pages runs and does what it says."""

import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page):
    return _python_blocks_of(page.read_text())


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


@pytest.mark.training
def test_position_groups_page_shows_the_spectrum(capsys):
    """Groups inside the halves reach the noise floor; a convolution and
    tiles that cut across them cannot; one kernel per position fits worse."""
    namespace = _run_page(DOCS / "position-groups.md")
    results = namespace["results"]
    params = {name: count for name, (count, _) in results.items()}
    mse = {name: value for name, (_, value) in results.items()}
    assert params == {
        "Conv2D (one group)": 10,
        "tiles, period 2": 20,
        "blocks of 5x5": 40,
        "the halves (a map)": 20,
        "LocallyConnected2D": 1000,
    }
    noise = 0.01  # the variance of the noise: 0.1 ** 2
    for name in ("blocks of 5x5", "the halves (a map)"):
        assert mse[name] < 1.5 * noise, (name, mse)
    for name in ("Conv2D (one group)", "tiles, period 2"):
        assert mse[name] > 100 * noise, (name, mse)
    assert 3 * mse["blocks of 5x5"] < mse["LocallyConnected2D"] < 100 * noise
    assert "test MSE" in capsys.readouterr().out


def _backends_page_reproduction():
    """The code block of the channels_first section of docs/backends.md."""
    page = (DOCS / "backends.md").read_text()
    section = page.split("## TensorFlow: `channels_first` convolutions on a CPU")[1]
    return _python_blocks_of(section.split("\n## ")[0])[0]


def _python_blocks_of(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("onednn", ["0", "1"], ids=["onednn-off", "onednn-on"])
def test_tensorflow_channels_first_conv1d_is_refused_without_onednn_and_runs_with_it(
    onednn,
):
    """The reproduction on docs/backends.md, in a fresh process per setting
    (TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when imported). Without
    oneDNN TensorFlow refuses the layer; with it the layer runs, and the
    difference it prints is the page's evidence (0 on some CPUs, 1.1 on an
    AMD EPYC with AVX-512). If TensorFlow stops refusing, the page is stale."""
    environment = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_ENABLE_ONEDNN_OPTS": onednn,
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    completed = subprocess.run(
        [sys.executable, "-c", _backends_page_reproduction()],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (line,) = [
        text
        for text in completed.stdout.splitlines()
        if text.startswith("channels_first - channels_last:")
    ]
    value = line.split(":", 1)[1].strip()
    if onednn == "0":
        assert value == "None"
    else:
        # It ran and compared: a finite difference, 0 on some CPUs and not on
        # others (the page's evidence), never NaN or infinite.
        assert value != "None"
        assert math.isfinite(float(value)), value


@pytest.mark.needs_keras("3.13.0")  # Keras' quantization configs
def test_quantization_page_quantizes_saves_and_enables_lora(
    tmp_path, monkeypatch, capsys
):
    """docs/quantization.md: both layers quantized, the file written, the
    outputs within int8's error, LoRA's trainable weights as printed."""
    page = DOCS / "quantization.md"
    monkeypatch.chdir(tmp_path)  # the page saves "l4_int8.keras"
    namespace = _run_page(page)
    before, after = namespace["before"], namespace["after"]
    assert np.linalg.norm(after - before) < 0.03 * np.linalg.norm(before)
    assert (tmp_path / "l4_int8.keras").is_file()
    out = capsys.readouterr().out
    assert "int8_from_float32" in out
    assert "['bias', 'lora_kernel_a', 'lora_kernel_b']" in out
