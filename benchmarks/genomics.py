"""Genomics models against the machine's limit and tf.keras 2.

The regime where the patches dwarf the kernel: long sequences (20k-60k
positions), 1-4 channels, windows of 2-32, one filter (`cases.GENOMICS`):
a residual stack like the published genomic-prediction models, a one-hot
strided layer, and the wide first layer of an expression classifier (128
filters). In the process of one backend, each case's model:
`model.predict_on_batch` at its inference batch and one
`model.train_on_batch` step at its training batch (`harness.SideBySide`),
each against its limit at the rates measured in the same process
(`models.forward_limit_ms`, `models.training_limit_ms` of its layers: every
layer's input, kernel and output moved once at the stream rate, or its FLOPs
at the GEMM rate; the zero padding and residual adds are not counted).

tf.keras 2's model of the same layers with ``implementation=1`` (a slice per
output position) and ``=3`` (a sparse kernel), the best of which is the
anchor, runs on TensorFlow whatever the Keras backend, so `run.py` times it
once, in the TensorFlow run: each implementation in a fresh process with a
time limit (`keras2_record`, ``run.py --child-keras2``), since building some
of them takes minutes; one a case cannot build at all is skipped with the
reason (`cases.ModelCase.keras2_skipped`).
"""

import time

from benchmarks import harness, models
from benchmarks.cases import GENOMICS

# The tf.keras 2 implementations timed beside each case.
KERAS2_IMPLEMENTATIONS = (1, 3)
# Seconds one tf.keras 2 child may take (build, first calls, timed calls).
KERAS2_TIMEOUT_S = 120
ROUNDS = 9


def keras2_name(implementation):
    """The results' key of a tf.keras 2 implementation."""
    return f"implementation={implementation}"


def time_genomics(rates, cases=GENOMICS, budget_s=4.0, rounds=ROUNDS):
    """Each of `cases`: inference and one training step of this package's
    model, with its limit at `rates`; a JSON-ready dict by case name."""
    timed = {}
    for case in cases:
        model = models.keras3_model(case.layers, residual=case.residual)
        side_by_side = harness.SideBySide({"ours": model}, (case,), rounds, budget_s)
        entry = {}
        for mode, batch in case.batches.items():
            entry[mode] = {
                "batch": batch,
                "ours_ms": side_by_side.median_ms(mode, batch)["ours"],
                "limit_ms": models.LIMIT_MS[mode](case.layers, batch, rates),
            }
        timed[case.name] = entry
        print(f"    {case.name}: {entry}", flush=True)
        del model, side_by_side  # the next case's model needs the memory
    return timed


def keras2_record(case, implementation):
    """Runs in a fresh process: tf.keras 2's model of `case` with
    `implementation`, its build and first calls (s), then each step's
    median ms over 3 calls (1 where one takes over 2 s)."""
    started = time.perf_counter()
    model = models.keras2_model(
        case.layers, residual=case.residual, implementation=implementation
    )
    record = {"build_s": time.perf_counter() - started}
    for mode, batch in case.batches.items():
        x, y = harness.inputs_and_targets((case,), batch)

        def step(mode=mode, x=x, y=y):
            harness.SideBySide.STEPS[mode](model, x, y)

        record[f"{mode}_first_s"] = harness.timed(step)
        samples = [harness.timed(step)]
        if samples[0] < 2:
            samples += [harness.timed(step) for _ in range(2)]
        record[f"{mode}_ms"] = harness.median_ms(samples)
        record[f"{mode}_runs"] = len(samples)
    return record
