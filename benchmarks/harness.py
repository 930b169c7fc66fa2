"""How the benchmarks measure: the timing loops, peak memory and the backends.

The one copy of what `run.py`, `models.py` and `transpose.py` share:

- timing: `timed` (seconds of one call), `interleaved_rounds` (every step
  once per round, until the rounds have used the budget: `models.py` and
  `transpose.py`), `rounds_per_step_budget` (each step leaves the rounds once
  it has used its own budget: `run.py`), `median_ms` and `interleaved_ms`;
- compiled Keras models side by side: `SideBySide` (what `models.py`,
  `groups.py` and `quantization.py` time), on `inputs_and_targets`;
- peak memory: `step_peak_mb`, read from Linux's ``/proc/self``;
- the backend: `backend` (``$KERAS_BACKEND``, checked), `backend_version`,
  `versions`, `onednn_enabled` (TensorFlow's own word, from a fresh
  process), `compiled` (a function as that backend runs it fastest) and
  `block` (wait until a result exists).
"""

import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata

import numpy as np

# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def timed(step):
    """Seconds that one call of `step` takes."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def median_ms(samples):
    """The median of `samples` (seconds), in milliseconds."""
    return 1e3 * statistics.median(samples)


def interleaved_rounds(steps, max_rounds, budget_s=math.inf, min_rounds=1):
    """Seconds per call of each named step: two warm-up calls each, then
    rounds that call every step in turn, so that load from elsewhere on the
    machine hits all of them alike. The rounds stop after `max_rounds`, or
    once `min_rounds` are done and they have taken `budget_s` in all."""
    for step in steps.values():
        step()
        step()
    samples = {name: [] for name in steps}
    started = time.perf_counter()
    for done in range(1, max_rounds + 1):
        for name, step in steps.items():
            samples[name].append(timed(step))
        if done >= min_rounds and time.perf_counter() - started > budget_s:
            break
    return samples


def rounds_per_step_budget(steps, min_samples, budget_s, max_rounds):
    """Seconds per call of each named step, in interleaved rounds (no warm-up
    here): a step leaves the rounds once it has `min_samples[name]` samples
    and they add up to `budget_s`; the others go on while the round count is
    under `max_rounds`."""
    samples = {name: [] for name in steps}
    for _ in range(max_rounds):
        active = [
            name
            for name, values in samples.items()
            if len(values) < min_samples[name] or sum(values) < budget_s
        ]
        if not active:
            break
        for name in active:
            samples[name].append(timed(steps[name]))
    return samples


def interleaved_ms(steps, rounds, budget_s):
    """Median ms per named step, rounds interleaved, after two warm-up calls;
    at least 3 rounds, then up to `rounds` while `budget_s` lasts."""
    samples = interleaved_rounds(steps, rounds, budget_s, min_rounds=3)
    return {name: median_ms(values) for name, values in samples.items()}


# --------------------------------------------------------------------------
# Compiled Keras models, side by side
# --------------------------------------------------------------------------


def inputs_and_targets(shapes, batch, seed=0):
    """Random float32 inputs of the first of `shapes` and targets shaped as
    the last one's output, at `batch`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shapes[0].input_shape[1:]), dtype=np.float32)
    last = shapes[-1]
    y = rng.standard_normal(
        (batch, *last.output_spatial, last.filters), dtype=np.float32
    )
    return x, y


class SideBySide:
    """Compiled Keras models of one input, timed together.

    `models` maps a name (the results' key) to a model whose input is that
    of `shapes[0]` and whose output is that of `shapes[-1]`; `median_ms(mode,
    batch)` times one step of each (``"inference"``: `predict_on_batch`,
    ``"training"``: `train_on_batch`) in interleaved rounds
    (`interleaved_ms`), so that load from elsewhere hits all alike.
    """

    STEPS = {
        "inference": lambda model, x, y: model.predict_on_batch(x),
        "training": lambda model, x, y: model.train_on_batch(x, y),
    }

    def __init__(self, models, shapes, rounds=9, budget_s=15.0):
        self.models = models
        self.shapes = shapes
        self.rounds = rounds
        self.budget_s = budget_s

    def median_ms(self, mode, batch):
        """``{name: ms}`` of one `mode` step of each model at `batch`."""
        x, y = inputs_and_targets(self.shapes, batch)
        step = self.STEPS[mode]
        steps = {
            name: (lambda model=model: step(model, x, y))
            for name, model in self.models.items()
        }
        return interleaved_ms(steps, self.rounds, self.budget_s)


# --------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------


def _proc_status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def step_peak_mb(step):
    """``(peak, resident)``: the peak MB of one call of `step` above what is
    resident before it, and that resident MB.

    The peak-RSS mark is reset first (``/proc/self/clear_refs``, Linux >=
    4.0), so that ``VmHWM`` after the call is the peak of the call alone.
    """
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _proc_status_kib("VmRSS")
    step()
    peak = _proc_status_kib("VmHWM")
    return (peak - before) / 1024, before / 1024


# --------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------


def backend():
    """``$KERAS_BACKEND``; exits unless it is jax, tensorflow or torch."""
    name = os.environ.get("KERAS_BACKEND")
    if name not in ("jax", "tensorflow", "torch"):
        sys.exit(f"Set KERAS_BACKEND to jax, tensorflow or torch (got {name!r}).")
    return name


def backend_version(backend):
    """``"<backend> <version>"``, from the backend's module."""
    return f"{backend} {importlib.import_module(backend).__version__}"


def versions(backend):
    """Python's version and the installed versions of what `backend` runs."""
    names = {
        "jax": ("keras", "jax", "jaxlib", "flax"),
        "tensorflow": ("keras", "tensorflow", "tf-keras"),
        "torch": ("keras", "torch"),
    }[backend]
    found = {"python": platform.python_version()}
    for name in (*names, "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


# What TensorFlow logs (INFO, C++) when it loads with its oneDNN kernels on.
ONEDNN_ON_LOG = "oneDNN custom operations are on"


def onednn_enabled(backend):
    """Whether TensorFlow runs its oneDNN kernels in a process with this
    environment (None: not TensorFlow).

    TensorFlow decides once, as it loads, from how it was built, the CPU's
    features and ``TF_ENABLE_ONEDNN_OPTS``, and logs `ONEDNN_ON_LOG` when
    they are on: a fresh process imports it with its INFO logs shown
    (``TF_CPP_MIN_LOG_LEVEL=0``) and its stderr is searched for that line.
    """
    if backend != "tensorflow":
        return None
    done = subprocess.run(
        [sys.executable, "-c", "import tensorflow"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0"),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return ONEDNN_ON_LOG in done.stderr


def compiled(backend, fn):
    """`fn` under `jax.jit`, `tf.function`, or torch's `no_grad` (eager)."""
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "torch":
        import torch

        def no_grad(*args):
            with torch.no_grad():
                return fn(*args)

        return no_grad
    return fn


def block(backend, value):
    """`value` once it exists: JAX and TensorFlow return before they finish,
    and so does torch on a GPU (its CPU ops run to completion)."""
    if backend == "jax":
        import jax

        return jax.block_until_ready(value)
    if backend == "tensorflow":
        return value.numpy()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return value
