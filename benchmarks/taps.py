"""The per-tap formulation against the patches, side by side: the crossover.

    KERAS_BACKEND=jax python -m benchmarks.taps [CASE,CASE...]

One process per backend. For each case, one locally connected layer in a
Keras model, compiled twice, with ``ops.formulation(taps=True)`` and
``taps=False`` pinned; the median ms of `predict_on_batch` (forward) and
`train_on_batch` (a training step) over interleaved rounds (3 to 9, about
20 s a case), after two warm-up calls. The cases sweep what the schedule's
rule reads (`_schedule.per_tap`): channels, filters and taps, at batch 32
and 2, from a genomic layer to DeepFace's L4. Prints one JSON line per case
(K*F: taps * channels * filters), the ratio patches / taps above 1 where the
taps are faster.
"""

import json
import statistics
import sys
import time

import keras
import numpy as np

from keras_localconn import LocallyConnected1D, LocallyConnected2D, LocallyConnected3D
from keras_localconn.ops import formulation

LAYERS = {1: LocallyConnected1D, 2: LocallyConnected2D, 3: LocallyConnected3D}
# name, spatial, channels, filters, kernel, strides, batch
CASES = [
    ("genomic k5 F1", (44314,), 1, 1, 5, 1, 32),
    ("genomic k5 F1 b2", (44314,), 1, 1, 5, 1, 2),
    ("k5 F2", (44314,), 1, 2, 5, 1, 32),
    ("k5 F4", (44314,), 1, 4, 5, 1, 32),
    ("k5 F8", (44314,), 1, 8, 5, 1, 32),
    ("k2 F1", (44314,), 1, 1, 2, 1, 32),
    ("k32 F1", (44314,), 1, 1, 32, 1, 32),
    ("one-hot k32 s16 C4 F1", (20000,), 4, 1, 32, 16, 32),
    ("3D 3x3x3 C2 F1", (24, 24, 24), 2, 1, 3, 1, 8),
    ("3D 3x3x3 C4 F2", (24, 24, 24), 4, 2, 3, 1, 8),
    ("L4 b8", (63, 63), 16, 16, 9, 1, 8),
]


def build(case, taps):
    name, spatial, channels, filters, kernel, strides, batch = case
    keras.utils.set_random_seed(0)
    inputs = keras.Input((*spatial, channels))
    outputs = LAYERS[len(spatial)](filters, kernel, strides=strides)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    return model


def time_case(case, budget_s=20.0):
    """Median ms of each (mode, formulation) of `case`, interleaved."""
    name, spatial, channels, filters, kernel, strides, batch = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *spatial, channels), dtype=np.float32)
    models = {taps: build(case, taps) for taps in (True, False)}
    y = rng.standard_normal(models[True].predict_on_batch(x).shape, dtype=np.float32)

    def step(model, taps, mode):
        with formulation(taps=taps):
            if mode == "forward":
                return model.predict_on_batch(x)
            return model.train_on_batch(x, y)

    keys = [(mode, taps) for taps in (True, False) for mode in ("forward", "train")]
    for mode, taps in keys:
        step(models[taps], taps, mode)
        step(models[taps], taps, mode)
    times = {key: [] for key in keys}
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while rounds < 3 or (rounds < 9 and time.perf_counter() < deadline):
        for mode, taps in keys:
            start = time.perf_counter()
            step(models[taps], taps, mode)
            times[(mode, taps)].append(time.perf_counter() - start)
        rounds += 1
    return rounds, {
        f"{mode}_{'taps' if taps else 'patches'}": 1000 * statistics.median(v)
        for (mode, taps), v in times.items()
    }


def main():
    only = sys.argv[1].split(",") if len(sys.argv) > 1 else None
    for case in CASES:
        if only and case[0] not in only:
            continue
        name, spatial, channels, filters, kernel, _, _ = case
        rounds, ms = time_case(case)
        kf = kernel ** len(spatial) * channels * filters
        print(json.dumps({"case": name, "KF": kf, "rounds": rounds, **ms}), flush=True)


if __name__ == "__main__":
    main()
