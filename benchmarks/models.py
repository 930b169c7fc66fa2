"""DeepFace's locally connected layers, timed against the machine's limit.

The shapes of `cases.CASES` are small enough that kernels and patches stay in
cache. Real models are not: DeepFace's L4 alone has a 239 MB kernel. Here,
in the process of one backend:

- the machine's *limit* is measured, on that backend: the rate at which it
  streams one large array from memory (the sum of an array the size of L4's
  kernel) and its GEMM rate (one 2048 x 2048 float32 matmul). The limit of
  a case is ``max(bytes that must move once / stream rate, FLOPs / GEMM
  rate)``;
- L4, L5 and L6 alone, at batch 1, 8 and 32: `model.predict_on_batch`;
- the L4-L6 stack: inference at batch 8 and one training step (forward,
  backward, SGD update: `model.train_on_batch`) at batch 32, beside
  tf.keras 2's `LocallyConnected2D(implementation=1)` (what DeepFace users
  ran), which runs on TensorFlow in the same process whatever the Keras
  backend; and the peak memory of the batch-32 training step of both, each
  in a fresh subprocess;
- what bounds the cases, each part timed alone (`time_parts`): Keras' own
  cost of one `predict_on_batch` call (an Identity model), and for L4 at
  batch 8 and 32 the two steps of the computation on this backend: building
  the patches (a gather of input rows) and contracting pre-built patches
  with the kernel (one batched matmul, ``(P, B, K) @ (P, K, F)``).

On TensorFlow, `run.py` times this module a second time in a fresh process
with ``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow turns oneDNN off by default on
CPUs without AVX-512 (this machine), and its batched matmul then runs on
Eigen.
"""

import math

import numpy as np

from benchmarks import harness
from benchmarks.cases import DEEPFACE_LAYERS

BATCHES = (1, 8, 32)
STACK_INFERENCE_BATCH = 8
STACK_TRAINING_BATCH = 32


def _limit_ms(moved_bytes, flops, rates):
    return (
        max(
            moved_bytes / rates["stream_bytes_per_s"],
            flops / rates["gemm_flops_per_s"],
        )
        * 1e3
    )


def forward_limit_ms(shapes, batch, rates):
    """Each kernel, input and output moved once, or the FLOPs at GEMM rate."""
    moved = sum(s.kernel_bytes() + s.activation_bytes(batch) for s in shapes)
    return _limit_ms(moved, sum(s.flops(batch) for s in shapes), rates)


def training_limit_ms(shapes, batch, rates):
    """A training step: every kernel read twice (forward, then the input
    gradient) and written once (the update, fused with its gradient at best),
    activations and their gradients moved once each; 3x the forward FLOPs
    (forward, input gradient, kernel gradient)."""
    moved = sum(3 * s.kernel_bytes() + 2 * s.activation_bytes(batch) for s in shapes)
    return _limit_ms(moved, 3 * sum(s.flops(batch) for s in shapes), rates)


# --------------------------------------------------------------------------
# The limit, measured on this backend
# --------------------------------------------------------------------------


def _median_ms(fn, rounds):
    """Median ms of `fn` over `rounds` calls, after two warm-up calls."""
    return harness.median_ms(harness.interleaved_rounds({"fn": fn}, rounds)["fn"])


def measure_rates(backend, rounds=9):
    """Stream rate (bytes/s) and GEMM rate (FLOP/s) of this backend here."""
    from keras import ops

    rng = np.random.default_rng(0)
    big = ops.convert_to_tensor(
        rng.standard_normal(DEEPFACE_LAYERS[0].kernel_bytes() // 4, dtype=np.float32)
    )
    square = ops.convert_to_tensor(rng.standard_normal((2048, 2048), dtype=np.float32))
    total = harness.compiled(backend, lambda a: ops.sum(a))
    product = harness.compiled(backend, lambda a: ops.matmul(a, a))
    stream_ms = _median_ms(lambda: harness.block(backend, total(big)), rounds)
    gemm_ms = _median_ms(lambda: harness.block(backend, product(square)), rounds)
    return {
        "stream_bytes_per_s": DEEPFACE_LAYERS[0].kernel_bytes() / (stream_ms / 1e3),
        "gemm_flops_per_s": 2 * 2048**3 / (gemm_ms / 1e3),
        "stream_ms": stream_ms,
        "gemm_ms": gemm_ms,
    }


# --------------------------------------------------------------------------
# Models: this package (Keras 3) and tf.keras 2
# --------------------------------------------------------------------------


def _keras3_model(shapes, seed=0):
    import keras

    from keras_localconn import LocallyConnected2D

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shapes[0].input_shape[1:])
    x = inputs
    for shape in shapes:
        x = LocallyConnected2D(shape.filters, shape.kernel_size, strides=shape.strides)(
            x
        )
    model = keras.Model(inputs, x)
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    return model


def _keras2_model(shapes, seed=0):
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input(shapes[0].input_shape[1:])
    x = inputs
    for shape in shapes:
        x = tf_keras.layers.LocallyConnected2D(
            shape.filters, shape.kernel_size, strides=shape.strides, implementation=1
        )(x)
    model = tf_keras.Model(inputs, x)
    model.compile(optimizer=tf_keras.optimizers.SGD(1e-4), loss="mse")
    return model


MODEL_BUILDERS = {"ours": _keras3_model, "tf.keras 2 implementation=1": _keras2_model}


def _inputs_and_targets(shapes, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shapes[0].input_shape[1:]), dtype=np.float32)
    last = shapes[-1]
    y = rng.standard_normal(
        (batch, *last.output_spatial, last.filters), dtype=np.float32
    )
    return x, y


def _interleaved(steps, rounds, budget_s):
    """Median ms per named step, rounds interleaved, after two warm-up calls;
    at least 3 rounds, then up to `rounds` while `budget_s` lasts."""
    samples = harness.interleaved_rounds(steps, rounds, budget_s, min_rounds=3)
    return {name: harness.median_ms(v) for name, v in samples.items()}


def _patch_rows(shape):
    """Input row of every (position, kernel offset) of a stride-1 2D layer,
    position-major: the gather that builds the patches."""
    height, width = shape.spatial
    out_h, out_w = shape.output_spatial
    kh, kw = shape.kernel_size
    oy, ox, ky, kx = np.meshgrid(
        np.arange(out_h), np.arange(out_w), np.arange(kh), np.arange(kw), indexing="ij"
    )
    return ((oy + ky) * width + (ox + kx)).reshape(-1).astype("int32")


def time_parts(backend, rates, rounds=7):
    """Keras' per-call cost, then L4's gather and contraction, each alone."""
    import keras
    from keras import ops

    shape = DEEPFACE_LAYERS[0]
    rng = np.random.default_rng(0)
    inputs = keras.Input(DEEPFACE_LAYERS[2].input_shape[1:])
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    x, _ = _inputs_and_targets((DEEPFACE_LAYERS[2],), 1)
    parts = {
        "dispatch_ms": _median_ms(lambda: identity.predict_on_batch(x), 3 * rounds)
    }
    rows = ops.convert_to_tensor(_patch_rows(shape))
    kernel = ops.convert_to_tensor(
        rng.standard_normal(
            (shape.positions, shape.patch_size, shape.filters), dtype=np.float32
        )
    )
    gather = harness.compiled(backend, lambda x_rows: ops.take(x_rows, rows, axis=0))
    contract = harness.compiled(backend, lambda patches, k: ops.matmul(patches, k))
    for batch in (8, 32):
        channels = shape.channels
        pixels = math.prod(shape.spatial)
        x_rows = ops.convert_to_tensor(
            rng.standard_normal((pixels, batch * channels), dtype=np.float32)
        )
        patches = ops.convert_to_tensor(
            rng.standard_normal(
                (shape.positions, batch, shape.patch_size), dtype=np.float32
            )
        )
        parts[f"{shape.name} b{batch}"] = {
            "gather_ms": _median_ms(
                lambda x_rows=x_rows: harness.block(backend, gather(x_rows)), rounds
            ),
            "contract_ms": _median_ms(
                lambda patches=patches: harness.block(
                    backend, contract(patches, kernel)
                ),
                rounds,
            ),
            "limit_ms": forward_limit_ms((shape,), batch, rates),
        }
    print(f"    parts: {parts}")
    return parts


def time_models(backend, rounds=9, budget_s=20.0):
    """Every case of this module on this backend; a JSON-ready dict."""
    rates = measure_rates(backend)
    forward = {}
    for shape in DEEPFACE_LAYERS:
        for batch in BATCHES:
            model = _keras3_model((shape,))
            x, _ = _inputs_and_targets((shape,), batch)
            ms = _interleaved(
                {"ours": lambda m=model, x=x: m.predict_on_batch(x)}, rounds, budget_s
            )["ours"]
            limit = forward_limit_ms((shape,), batch, rates)
            forward[f"{shape.name} b{batch}"] = {"ours_ms": ms, "limit_ms": limit}
            print(f"    {shape.name} batch {batch}: {ms:.1f} ms, limit {limit:.1f} ms")

    stack = {}
    ours, keras2 = _keras3_model(DEEPFACE_LAYERS), _keras2_model(DEEPFACE_LAYERS)
    x, _ = _inputs_and_targets(DEEPFACE_LAYERS, STACK_INFERENCE_BATCH)
    inference = _interleaved(
        {
            "ours": lambda: ours.predict_on_batch(x),
            "keras2": lambda: keras2.predict_on_batch(x),
        },
        rounds,
        budget_s,
    )
    stack["inference"] = {
        "batch": STACK_INFERENCE_BATCH,
        "ours_ms": inference["ours"],
        "keras2_ms": inference["keras2"],
        "limit_ms": forward_limit_ms(DEEPFACE_LAYERS, STACK_INFERENCE_BATCH, rates),
    }
    x, y = _inputs_and_targets(DEEPFACE_LAYERS, STACK_TRAINING_BATCH)
    training = _interleaved(
        {
            "ours": lambda: ours.train_on_batch(x, y),
            "keras2": lambda: keras2.train_on_batch(x, y),
        },
        rounds,
        budget_s,
    )
    stack["training"] = {
        "batch": STACK_TRAINING_BATCH,
        "ours_ms": training["ours"],
        "keras2_ms": training["keras2"],
        "limit_ms": training_limit_ms(DEEPFACE_LAYERS, STACK_TRAINING_BATCH, rates),
    }
    print(f"    stack: {stack}")
    return {
        "rates": rates,
        "onednn": harness.onednn_enabled(backend),
        "forward": forward,
        "stack": stack,
        "parts": time_parts(backend, rates),
    }


def training_step_peak_mb(model_name):
    """Runs in a fresh subprocess: peak MB of one batch-32 training step of
    the L4-L6 stack above what is resident before it, and the kernels' MB."""
    model = MODEL_BUILDERS[model_name](DEEPFACE_LAYERS)
    x, y = _inputs_and_targets(DEEPFACE_LAYERS, STACK_TRAINING_BATCH)
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    peak_mb, _ = harness.step_peak_mb(lambda: model.train_on_batch(x, y))
    kernels = sum(shape.kernel_bytes() for shape in DEEPFACE_LAYERS) / 2**20
    return {"step_peak_mb": peak_mb, "kernels_mb": kernels}
