"""Quantized DeepFace layers: int8, weight-only int8 and int4 beside float32.

In the process of one backend, for each of DeepFace's L4, L5 and L6 at
batch 1, 8 and 32, side by side (`harness.SideBySide`, as the DeepFace
layers are timed): `model.predict_on_batch` of a one-layer model with the layer's
shape, as

- ``float32``: the float layer, as the DeepFace part times it;
- ``int8``: after `model.quantize("int8")` (int8 kernel, inputs quantized
  per sample);
- ``int8 weight-only``: after `model.quantize(config=Int8QuantizationConfig(
  weight_quantizer=None, activation_quantizer=None))` (float inputs);
- ``int4``: after `model.quantize("int4")` (Keras' default block size).

Each mode is held against the **float32 limit** (`models.forward_limit_ms`:
the float kernel, the input and the output moved once, or the FLOPs at the
GEMM rate, at the rates measured in the same process), the figure the
quantized layers are meant to beat, and against its own limit: the bytes it
stores (the encoded kernel and its scales) moved once, or the same FLOPs.
Needs Keras >= 3.13 (the quantization configs); on an older Keras the part
records why it did not run.
"""

from benchmarks import harness, models
from benchmarks.cases import DEEPFACE_LAYERS

SHAPES = DEEPFACE_LAYERS
BATCHES = models.BATCHES
FLOAT = "float32"
# The modes, by the name the results give them, each timed beside FLOAT.
MODES = ("int8", "int8 weight-only", "int4")
# Keras' default int4 block size (`Int4QuantizationConfig`), along K.
INT4_BLOCK = 128
ROUNDS = 9
BUDGET_S = 15.0


def stored_bytes(shape, mode):
    """Bytes of the kernel `mode` stores: float32, or int8 (int4 packed two
    a byte) with its float32 scales (and int4's int8 zero points)."""
    positions, k, filters = shape.positions, shape.patch_size, shape.filters
    if mode == FLOAT:
        return shape.kernel_bytes()
    if mode.startswith("int8"):
        return positions * k * filters + 4 * positions * filters
    blocks = -(-k // INT4_BLOCK)
    packed = positions * k * -(-filters // 2)
    return packed + 5 * positions * blocks * filters


def limit_ms(shape, mode, batch, rates):
    """The forward limit of `shape` when its kernel weighs what `mode`
    stores (FLOAT: `models.forward_limit_ms`)."""
    moved = stored_bytes(shape, mode) + shape.activation_bytes(batch)
    return models.limit_ms(moved, shape.flops(batch), rates)


def _config(mode):
    import keras

    if mode == "int8":
        return {"mode": "int8"}
    if mode == "int8 weight-only":
        config = keras.quantizers.Int8QuantizationConfig(
            weight_quantizer=None, activation_quantizer=None
        )
        return {"config": config}
    return {"mode": "int4"}


def _model(shape, mode):
    import keras

    import keras_localconn

    keras.utils.set_random_seed(0)
    layer = keras_localconn.LocallyConnected2D(
        shape.filters, shape.kernel_size, strides=shape.strides
    )
    model = keras.Sequential([keras.Input(shape.input_shape[1:]), layer])
    if mode != FLOAT:
        model.quantize(**_config(mode))
    model.compile(optimizer="sgd", loss="mse")
    return model


def available():
    """Why this part cannot run with this Keras, or None."""
    import keras

    if not hasattr(keras.quantizers, "Int8QuantizationConfig"):
        version = keras.__version__
        return f"needs Keras >= 3.13 (quantization configs); this is {version}"
    return None


def time_quantization(
    rates, shapes=SHAPES, batches=BATCHES, rounds=ROUNDS, budget_s=BUDGET_S
):
    """Every mode and float32 at each layer and batch, side by side: a
    JSON-ready ``{"<layer>": {"b<batch>": {"<mode>_ms": ...,
    "<mode>_limit_ms": ...}}}`` with the rates they were held against."""
    reason = available()
    if reason is not None:
        print(f"    skipped: {reason}", flush=True)
        return {"skipped": reason}
    record = {"rates": rates, "int4_block_size": INT4_BLOCK}
    for shape in shapes:
        built = {mode: _model(shape, mode) for mode in (FLOAT, *MODES)}
        layer_record = {}
        side_by_side = harness.SideBySide(built, (shape,), rounds, budget_s)
        for batch in batches:
            ms = side_by_side.median_ms("inference", batch)
            entry = {f"{mode}_ms": value for mode, value in ms.items()}
            for mode in built:
                entry[f"{mode}_limit_ms"] = limit_ms(shape, mode, batch, rates)
            layer_record[f"b{batch}"] = entry
            print(f"    {shape.name} b{batch}: {entry}", flush=True)
        record[shape.name] = layer_record
        del built, side_by_side  # the next layer's models need the memory
    return record
