"""Position groups on DeepFace's L4: the range between Conv2D and the layer.

In the process of one backend, at batch 1, 8 and 32, side by side
(`harness.SideBySide`, as the DeepFace layers are timed): `model.predict_on_batch`
of a one-layer model with L4's shape (a 63x63x16 input, 9x9 windows, 16
filters, 55x55 output positions) as

- ``ungrouped``: `LocallyConnected2D`, one kernel per position (3025);
- ``blocks 2x2`` and ``blocks 4x4``: ``position_groups=(2, 2)`` (784
  kernels) and ``(4, 4)`` (196 kernels, partial blocks at the far edges);
- ``one group``: one kernel for every position, which the engine computes
  with `keras.ops.conv`;
- ``Conv2D``: `keras.layers.Conv2D` with the same window and filters.

Each grouping's limit is the forward limit of `models.forward_limit_ms` with
its own kernel, at the rates measured in the same process (kept with the
figures, which a run of this part alone adds to earlier results): its ``T``
kernels, the input and the output moved once, or the FLOPs (the same for
every grouping: each position still contracts its patch with a kernel) at
the GEMM rate.
"""

import math

from benchmarks import harness, models
from benchmarks.cases import DEEPFACE_LAYERS

SHAPE = DEEPFACE_LAYERS[0]  # L4
BATCHES = models.BATCHES
# The position_groups of each grouping, by the name the results give it.
GROUPINGS = {
    "ungrouped": None,
    "blocks 2x2": (2, 2),
    "blocks 4x4": (4, 4),
    "one group": SHAPE.output_spatial,
}
CONV = "Conv2D"
ROUNDS = 9
BUDGET_S = 15.0


def group_count(shape, position_groups):
    """T, the kernels of `shape` with `position_groups` blocks (None: P)."""
    if position_groups is None:
        return shape.positions
    return math.prod(-(-n // b) for n, b in zip(shape.output_spatial, position_groups))


def limit_ms(shape, position_groups, batch, rates):
    """The forward limit of `shape` with its `group_count` kernels."""
    kernel = group_count(shape, position_groups) * shape.patch_size * shape.filters
    moved = 4 * kernel + shape.activation_bytes(batch)
    return models.limit_ms(moved, shape.flops(batch), rates)


def _model(shape, position_groups=None, conv=False):
    import keras

    import keras_localconn

    keras.utils.set_random_seed(0)
    layer_class = keras.layers.Conv2D if conv else keras_localconn.LocallyConnected2D
    extra = {} if conv else {"position_groups": position_groups}
    layer = layer_class(
        shape.filters, shape.kernel_size, strides=shape.strides, **extra
    )
    model = keras.Sequential([keras.Input(shape.input_shape[1:]), layer])
    model.compile(optimizer="sgd", loss="mse")
    return model


def time_groups(rates, shape=SHAPE, batches=BATCHES, rounds=ROUNDS, budget_s=BUDGET_S):
    """Every grouping and Conv2D at each batch, side by side: a JSON-ready
    ``{"kernels": {name: T}, "b<batch>": {"<name>_ms": ..., "<name>_limit_ms":
    ...}}``."""
    built = {name: _model(shape, groups) for name, groups in GROUPINGS.items()}
    built[CONV] = _model(shape, conv=True)
    record = {
        "layer": shape.name,
        "rates": rates,
        "kernels": {
            name: group_count(shape, groups) for name, groups in GROUPINGS.items()
        },
    }
    side_by_side = harness.SideBySide(built, (shape,), rounds, budget_s)
    for batch in batches:
        ms = side_by_side.median_ms("inference", batch)
        entry = {f"{name}_ms": value for name, value in ms.items()}
        for name, groups in GROUPINGS.items():
            entry[f"{name}_limit_ms"] = limit_ms(shape, groups, batch, rates)
        record[f"b{batch}"] = entry
        print(f"    {shape.name} b{batch}: {entry}", flush=True)
    return record
