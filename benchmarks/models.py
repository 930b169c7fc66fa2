"""DeepFace's locally connected layers, timed against the machine's limit.

The shapes of `cases.CASES` are small enough that kernels and patches stay in
cache. Real models are not: DeepFace's L4 alone has a 239 MB kernel. Here,
in the process of one backend:

- the rates the *limit* is made of are measured, on that backend and on
  numpy, in the same interleaved rounds (`measure_rates`): the stream rate
  (the sum of an array the size of L4's kernel, read once, and a copy of it,
  ``a + 1``, read and written) and the GEMM rate (one 2048 x 2048 float32
  matmul). The machine's rates are the best stream and the best GEMM rate
  over every backend's run and numpy's (`best_rates`, which `report.py`
  applies to all results files). The limit of a case is ``max(bytes that
  must move once / stream rate, FLOPs / GEMM rate)``; this process prints
  and stores its limits at this backend's own rates;
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
  with the kernel (one batched matmul, ``(P, B, K) @ (P, K, F)``);
- other fields' regimes (`time_regimes`, `cases.REGIMES`: 3D fields with
  few filters, a long 1D sequence, a strided 2D layer with many filters),
  each alone at its batch: `model.predict_on_batch` and one
  `model.train_on_batch` step of a one-layer model, beside tf.keras 2's
  ``implementation=1`` where it exists and builds in reasonable time (the
  case says why not);
- the chunk-size curve (`time_chunk_curve`), the evidence behind the
  engine's chunk size: the engine's forward pass of L4, L5 and L6 at batch
  1, 8 and 32, compiled (`harness.compiled`), in the formulation the engine
  picks (`_schedule.formulation`) but for its chunk, over positions per
  chunk doubling from `CURVE_FIRST_CHUNK`, the chunks that divide the
  positions, and all positions at once; with the chunk the engine picks.

On TensorFlow, `run.py` times this module a second time in a fresh process
with ``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow turns oneDNN off by default on
CPUs without AVX-512 (this machine), and its batched matmul then runs on
Eigen.
"""

import functools
import importlib.util
import math

import numpy as np

from benchmarks import harness
from benchmarks.cases import DEEPFACE_LAYERS, REGIMES

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


# The limit of each kind of step, by the name the results give it.
LIMIT_MS = {"inference": forward_limit_ms, "training": training_limit_ms}


def case_key(shape, batch):
    """The results' key of `shape` alone at `batch`: ``"L4 b8"``."""
    return f"{shape.name} b{batch}"


def parse_case_key(key):
    """``(shape, batch)`` of a `case_key` of one of `DEEPFACE_LAYERS`."""
    name, batch = key.rsplit(" b", 1)
    (shape,) = [s for s in DEEPFACE_LAYERS if s.name == name]
    return shape, int(batch)


# --------------------------------------------------------------------------
# The rates, measured on this backend and on numpy in the same process
# --------------------------------------------------------------------------

# The stream probes run over an array the size of L4's kernel; the GEMM
# probe is one square float32 matmul of this size.
STREAM_PROBE_BYTES = DEEPFACE_LAYERS[0].kernel_bytes()
GEMM_PROBE_SIZE = 2048


def _median_ms(fn, rounds):
    """Median ms of `fn` over `rounds` calls, after two warm-up calls."""
    return harness.median_ms(harness.interleaved_rounds({"fn": fn}, rounds)["fn"])


def _backend_probes(backend, big, square):
    """The probes on this backend, each run to completion: ``sum`` reads
    `big` once, ``copy`` (``big + 1``) reads it and writes as much,
    ``gemm`` is ``square @ square``."""
    from keras import ops

    big, square = ops.convert_to_tensor(big), ops.convert_to_tensor(square)
    total = harness.compiled(backend, lambda a: ops.sum(a))
    copy = harness.compiled(backend, lambda a: ops.add(a, 1.0))
    product = harness.compiled(backend, lambda a: ops.matmul(a, a))
    return {
        "sum": lambda: harness.block(backend, total(big)),
        "copy": lambda: harness.block(backend, copy(big)),
        "gemm": lambda: harness.block(backend, product(square)),
    }


def _numpy_probes(big, square):
    """The same probes in numpy (the copy into a buffer allocated once)."""
    out = np.empty_like(big)
    return {
        "sum": lambda: np.sum(big),
        "copy": lambda: np.add(big, 1.0, out=out),
        "gemm": lambda: np.matmul(square, square),
    }


def _rates(samples):
    """Rates from the probes' samples: bytes/s of the sum (read once) and of
    the copy (read + write), FLOP/s of the matmul, and their median ms."""
    ms = {name: harness.median_ms(values) for name, values in samples.items()}
    return {
        "stream_bytes_per_s": STREAM_PROBE_BYTES / (ms["sum"] / 1e3),
        "copy_bytes_per_s": 2 * STREAM_PROBE_BYTES / (ms["copy"] / 1e3),
        "gemm_flops_per_s": 2 * GEMM_PROBE_SIZE**3 / (ms["gemm"] / 1e3),
        "stream_ms": ms["sum"],
        "copy_ms": ms["copy"],
        "gemm_ms": ms["gemm"],
    }


def measure_rates(backend, rounds=9):
    """``{"rates": ..., "numpy_rates": ...}``: the stream and GEMM rates of
    this backend and of numpy here, every probe of both in the same
    interleaved rounds."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal(STREAM_PROBE_BYTES // 4, dtype=np.float32)
    square = rng.standard_normal((GEMM_PROBE_SIZE,) * 2, dtype=np.float32)
    probes = {
        **{("rates", n): p for n, p in _backend_probes(backend, big, square).items()},
        **{("numpy_rates", n): p for n, p in _numpy_probes(big, square).items()},
    }
    samples = harness.interleaved_rounds(probes, rounds)
    return {
        key: _rates({n: v for (k, n), v in samples.items() if k == key})
        for key in ("rates", "numpy_rates")
    }


def best_rates(rate_sets):
    """The machine's rates: the fastest stream (sum or copy) and the fastest
    GEMM of `rate_sets` (label -> a `measure_rates` dict), with the label and
    probe that set each (``stream_from``, ``gemm_from``); {} if none."""
    if not rate_sets:
        return {}
    stream, stream_from = max(
        (rates[key], f"{label}, {probe}")
        for label, rates in rate_sets.items()
        for key, probe in (("stream_bytes_per_s", "sum"), ("copy_bytes_per_s", "copy"))
        if key in rates
    )
    gemm, gemm_from = max(
        (rates["gemm_flops_per_s"], label) for label, rates in rate_sets.items()
    )
    return {
        "stream_bytes_per_s": stream,
        "gemm_flops_per_s": gemm,
        "stream_from": stream_from,
        "gemm_from": gemm_from,
    }


# --------------------------------------------------------------------------
# Models: this package (Keras 3) and tf.keras 2
# --------------------------------------------------------------------------


def _compiled_model(keras_module, layers_module, shapes, seed, **layer_kwargs):
    """`shapes` stacked as `layers_module`'s ``LocallyConnected{rank}D``
    layers in a `keras_module` model, compiled with SGD and an mse loss."""
    keras_module.utils.set_random_seed(seed)
    inputs = keras_module.Input(shapes[0].input_shape[1:])
    x = inputs
    for shape in shapes:
        layer = getattr(layers_module, f"LocallyConnected{shape.rank}D")
        x = layer(
            shape.filters,
            shape.kernel_size,
            strides=shape.strides,
            padding=shape.padding,
            **layer_kwargs,
        )(x)
    model = keras_module.Model(inputs, x)
    model.compile(optimizer=keras_module.optimizers.SGD(1e-4), loss="mse")
    return model


def _keras3_model(shapes, seed=0):
    """`shapes` as this package's layers, in a Keras 3 model."""
    import keras

    import keras_localconn

    return _compiled_model(keras, keras_localconn, shapes, seed)


def _keras2_model(shapes, seed=0):
    """`shapes` as tf.keras 2's layers with ``implementation=1``."""
    import tf_keras

    return _compiled_model(tf_keras, tf_keras.layers, shapes, seed, implementation=1)


MODEL_BUILDERS = {"ours": _keras3_model, "tf.keras 2 implementation=1": _keras2_model}


def keras2_available():
    """Whether tf.keras 2 is installed: a GPU machine's bare image has no
    TensorFlow (integration/gpu_check.py), and there ours is timed alone."""
    return importlib.util.find_spec("tf_keras") is not None


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


# One step of a compiled model on inputs `x` and targets `y`, by the name the
# results give it.
_STEPS = {
    "inference": lambda model, x, y: model.predict_on_batch(x),
    "training": lambda model, x, y: model.train_on_batch(x, y),
}


def _side_by_side(models, shapes, batch, mode, rates, rounds, budget_s):
    """`mode` (a key of `_STEPS`) of each named model of `shapes` at `batch`,
    interleaved (`_interleaved`): ``{"batch", "<name>_ms", ..., "limit_ms"}``,
    the limit at `rates`."""
    x, y = _inputs_and_targets(shapes, batch)
    step = _STEPS[mode]
    ms = _interleaved(
        {name: functools.partial(step, model, x, y) for name, model in models.items()},
        rounds,
        budget_s,
    )
    return {
        "batch": batch,
        **{f"{name}_ms": value for name, value in ms.items()},
        "limit_ms": LIMIT_MS[mode](shapes, batch, rates),
    }


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
        parts[case_key(shape, batch)] = {
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
    """The rates and DeepFace's layers on this backend; a JSON-ready dict."""
    measured = measure_rates(backend)
    rates = measured["rates"]
    forward = {}
    for shape in DEEPFACE_LAYERS:
        for batch in BATCHES:
            # A model per batch: Keras on TensorFlow retraces a model called
            # at several batch sizes for any batch, and the engine then
            # schedules for an assumed one.
            model = {"ours": _keras3_model((shape,))}
            entry = _side_by_side(
                model, (shape,), batch, "inference", rates, rounds, budget_s
            )
            forward[case_key(shape, batch)] = entry
            print(
                f"    {shape.name} batch {batch}: {entry['ours_ms']:.1f} ms, "
                f"limit {entry['limit_ms']:.1f} ms"
            )
    both = {"ours": _keras3_model(DEEPFACE_LAYERS)}
    if keras2_available():
        both["keras2"] = _keras2_model(DEEPFACE_LAYERS)
    stack = {
        mode: _side_by_side(both, DEEPFACE_LAYERS, batch, mode, rates, rounds, budget_s)
        for mode, batch in (
            ("inference", STACK_INFERENCE_BATCH),
            ("training", STACK_TRAINING_BATCH),
        )
    }
    print(f"    stack: {stack}")
    return {
        **measured,
        "onednn": harness.onednn_enabled(backend),
        "forward": forward,
        "stack": stack,
        "parts": time_parts(backend, rates),
    }


# --------------------------------------------------------------------------
# Other fields' regimes
# --------------------------------------------------------------------------

# Rounds per step and seconds per step group (one case, inference or
# training), after two warm-up calls and at least 3 rounds. All of `REGIMES`
# took 40-50 s per backend on 2 shared cores (builds and compilations
# included), well inside the 5 minutes this part may take; tf.keras 2 where
# it would take minutes to build is left out (`ConvShape.keras2_skipped`).
REGIME_ROUNDS = 9
REGIME_BUDGET_S = 15.0


def time_regimes(rates, shapes=REGIMES, rounds=REGIME_ROUNDS, budget_s=REGIME_BUDGET_S):
    """Each of `shapes` alone at its batch: inference and one training step,
    beside tf.keras 2 where it is timed; a JSON-ready dict by case name."""
    timed = {}
    for shape in shapes:
        models = {"ours": _keras3_model((shape,))}
        if not shape.keras2_skipped and keras2_available():
            models["keras2"] = _keras2_model((shape,))
        entry = {
            mode: _side_by_side(
                models, (shape,), shape.batch, mode, rates, rounds, budget_s
            )
            for mode in _STEPS
        }
        if shape.keras2_skipped:
            entry["keras2_skipped"] = shape.keras2_skipped
        timed[shape.name] = entry
        print(f"    {shape.name}: {entry}", flush=True)
    return timed


# --------------------------------------------------------------------------
# The chunk-size curve: the engine's forward pass per chunk size
# --------------------------------------------------------------------------

CURVE_BATCHES = BATCHES
# The smallest chunk timed, in output positions; each next one doubles.
CURVE_FIRST_CHUNK = 4
# The most chunks per call timed: smaller chunks are left out. Under torch an
# eager Python loop over L4's 757 chunks of 4 positions took 3-7 s a call
# here (its per-chunk overhead), more than the rest of its curve together.
CURVE_MAX_CHUNKS = 256
# Rounds per chunk size and seconds per (layer, batch), after two warm-up
# calls and at least 3 rounds. The whole curve (L4-L6 at batch 1, 8 and 32)
# took about 2.5 min under torch on 2 cores shared with other work (load
# average 5), jax and TensorFlow 1.5-2.5 min, compilations included: inside
# the 3-4 minutes this part may take.
CURVE_ROUNDS = 9
CURVE_BUDGET_S = 10.0


def _smallest_chunk(positions):
    """`CURVE_FIRST_CHUNK`, or more where it would take over
    `CURVE_MAX_CHUNKS` chunks."""
    return max(CURVE_FIRST_CHUNK, -(-positions // CURVE_MAX_CHUNKS))


def geometric_chunks(positions):
    """`CURVE_FIRST_CHUNK`, doubled while under `positions`, from
    `_smallest_chunk` on."""
    chunks = []
    chunk = CURVE_FIRST_CHUNK
    while chunk < positions:
        if chunk >= _smallest_chunk(positions):
            chunks.append(chunk)
        chunk *= 2
    return chunks


def dividing_chunks(positions):
    """The chunks from `_smallest_chunk` up that divide `positions`: no
    positions are left over for the engine's remainder step (on jax the
    kernel is then sliced, a kernel-sized copy per call)."""
    return [
        c for c in range(_smallest_chunk(positions), positions) if positions % c == 0
    ]


def curve_chunks(positions, default_chunk):
    """Positions per chunk to time, ascending: the `geometric_chunks`, the
    `dividing_chunks`, `default_chunk`, then None (all at once)."""
    chunks = {*geometric_chunks(positions), *dividing_chunks(positions)}
    if default_chunk is not None and default_chunk < positions:
        chunks.add(default_chunk)
    return [*sorted(chunks), None]


def _engine_forward(backend, shape, formulation):
    """`fn(x, kernel)`: the engine's forward pass of `shape` computed in
    `formulation`, compiled as the backend runs it fastest."""
    from keras_localconn import _local_conv

    def forward(x, kernel):
        return _local_conv.local_conv(
            x,
            kernel,
            shape.kernel_size,
            shape.strides,
            shape.padding,
            1,
            "channels_last",
            formulation=formulation,
        )

    return harness.compiled(backend, forward)


def _chunk_curve(backend, shape, batch, kernel, rates, rounds, budget_s):
    """One curve: ms of the forward pass of `shape` at `batch` per chunk size
    of `curve_chunks`, in interleaved rounds, and the default's pick."""
    from keras import ops

    from keras_localconn import _arguments, _schedule
    from keras_localconn.ops import formulation

    geo = _arguments.standardize_geometry(
        shape.spatial,
        shape.channels,
        shape.kernel_size,
        shape.strides,
        shape.padding,
        1,
        "benchmarks",
    )
    default = _schedule.formulation(geo, batch, "float32", shape.filters)
    x, _ = _inputs_and_targets((shape,), batch)
    x = ops.convert_to_tensor(x)
    steps = {}
    for chunk in curve_chunks(geo.num_positions, default.chunk):
        # Pinned as a user pins it: the rule's other choices follow the chunk
        # (its loop, its backward groups).
        with formulation(chunk=chunk):
            pinned = _schedule.formulation(geo, batch, "float32", shape.filters)
        forward = _engine_forward(backend, shape, pinned)
        steps[chunk] = lambda f=forward: harness.block(backend, f(x, kernel))
    ms = _interleaved(steps, rounds, budget_s)
    patch_bytes = geo.patch_size * batch * 4  # of one position
    return {
        "layer": shape.name,
        "batch": batch,
        "positions": geo.num_positions,
        "patch_size": geo.patch_size,
        "default_chunk": default.chunk,
        "limit_ms": forward_limit_ms((shape,), batch, rates),
        "points": [
            {
                "chunk": chunk,
                "chunk_bytes": (chunk or geo.num_positions) * patch_bytes,
                "ms": value,
            }
            for chunk, value in ms.items()
        ],
    }


def time_chunk_curve(
    backend,
    rates,
    shapes=DEEPFACE_LAYERS,
    batches=CURVE_BATCHES,
    rounds=CURVE_ROUNDS,
    budget_s=CURVE_BUDGET_S,
):
    """The chunk-size curve of each of `shapes` at each of `batches`, with
    the chunk pinned by `keras_localconn.ops.formulation` and the rest of the
    formulation the rule's for that chunk (the private engine API:
    `_schedule.formulation`, `_local_conv.local_conv`); JSON-ready, by
    `case_key`."""
    from keras import ops

    curves = {}
    for shape in shapes:
        rng = np.random.default_rng(1)
        kernel = ops.convert_to_tensor(
            rng.standard_normal(shape.kernel_shape, dtype=np.float32)
            / np.sqrt(shape.patch_size, dtype=np.float32)
        )
        for batch in batches:
            curve = _chunk_curve(backend, shape, batch, kernel, rates, rounds, budget_s)
            curves[case_key(shape, batch)] = curve
            best = min(curve["points"], key=lambda point: point["ms"])
            print(
                f"    curve {case_key(shape, batch)}: default chunk "
                f"{curve['default_chunk']}, best {best['chunk']} "
                f"({best['ms']:.1f} ms), limit {curve['limit_ms']:.1f} ms: "
                + ", ".join(f"{p['chunk']}: {p['ms']:.1f}" for p in curve["points"]),
                flush=True,
            )
    return curves


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
