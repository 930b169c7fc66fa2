"""Benchmark the transposed locally connected layer on one backend.

    KERAS_BACKEND=jax python -m benchmarks.transpose [--budget SECONDS]

For each shape, in one process and in interleaved rounds after a warm-up
(medians kept), it times:

- ``ours``: the forward pass of `LocallyConnected{N}DTranspose`: its op,
  `local_conv_transpose`, with the layer's kernel and arguments, on the
  formulation this Keras picks (one scatter-add, Keras >= 3.14);
- ``ours, gather-sum``: the same op told to use the formulation of older
  Keras (``scatter_add=False``: contributions gathered back per output row
  and summed), to show the choice;
- ``grad of forward``: the gradient w.r.t. its input of the forward
  `LocallyConnected{N}D` with the same kernel, pulled back from the same
  tensor: the same arithmetic, through the backend's autodiff. JAX and
  TensorFlow compile the gradient and drop the unused forward matmul; torch
  (eager) runs the forward pass first, as its autograd must;
- ``Conv{N}DTranspose``: Keras' shared-weight transposed convolution of the
  same shapes (the backend's native kernel; P times fewer weights).

JAX runs under `jax.jit`, TensorFlow under `tf.function`, torch eagerly (as
in `benchmarks.run`). Prints a table and writes
``benchmarks/results/transpose_<backend>.json``.
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform

import keras
import numpy as np

from benchmarks import harness
from benchmarks.cases import TRANSPOSE_CASES
from keras_localconn import _schedule, _transpose, layers
from keras_localconn.ops import formulation

HERE = pathlib.Path(__file__).resolve().parent
BACKEND = harness.backend()


def _layers(shape):
    """(ours, forward twin with the same kernel, Keras Conv*DTranspose)."""
    rank = shape.rank
    kwargs = dict(strides=shape.strides, padding=shape.padding, use_bias=False)
    ours = getattr(layers, f"LocallyConnected{rank}DTranspose")(
        shape.filters, shape.kernel_size, **kwargs
    )
    ours.build(shape.input_shape)
    output_shape = ours.compute_output_shape(shape.input_shape)
    forward = getattr(layers, f"LocallyConnected{rank}D")(
        shape.input_shape[-1], shape.kernel_size, **kwargs
    )
    forward.build(output_shape)
    assert tuple(forward.kernel.shape) == tuple(ours.kernel.shape)
    forward.kernel.assign(ours.kernel)
    conv = getattr(keras.layers, f"Conv{rank}DTranspose")(
        shape.filters, shape.kernel_size, **kwargs
    )
    conv.build(shape.input_shape)
    return ours, forward, conv, output_shape


def _transposed(layer, scatter_add):
    """`(y, kernel) ->` `layer`'s op on `y` with `kernel`, in the formulation
    `scatter_add` (None: the one this Keras picks). A new function each time,
    so that JAX traces each formulation apart."""

    def call(y, kernel):
        with formulation(scatter_add=scatter_add):
            return _transpose.local_conv_transpose(
                y,
                kernel,
                layer.kernel_size,
                strides=layer.strides,
                padding=layer.padding,
                output_padding=layer.output_padding,
                dilation_rate=layer.dilation_rate,
                data_format=layer.data_format,
            )

    return call


def _runners(shape):
    """name -> zero-argument callable that runs one step to completion."""
    ours, forward, conv, output_shape = _layers(shape)
    rng = np.random.default_rng(0)
    y = rng.standard_normal(shape.input_shape, dtype=np.float32)
    x = np.zeros(output_shape, np.float32)
    kernel, conv_kernel = ours.kernel.value, conv.kernel.value
    if BACKEND == "tensorflow":
        import tensorflow as tf

        y, x = tf.constant(y), tf.constant(x)
    elif BACKEND == "torch":
        import torch

        y = torch.from_numpy(y)
        x = torch.from_numpy(x).requires_grad_(True)
        kernel, conv_kernel = kernel.detach(), conv_kernel.detach()

    def conv_transpose(y, kernel):
        return conv.stateless_call([kernel], [], y)[0]

    def forward_fn(x, kernel):
        return forward.stateless_call([kernel], [], x)[0]

    formulations = {"ours": None}
    if _schedule.HAS_SCATTER_ADD:
        formulations["ours, gather-sum"] = False
    runners = {}
    for name, scatter_add in formulations.items():
        step = harness.compiled(BACKEND, _transposed(ours, scatter_add))
        runners[name] = _to_completion(step, y, kernel)
    runners["grad of forward"] = _to_completion(
        _grad_of_forward(forward_fn, x), y, kernel
    )
    runners[f"Conv{shape.rank}DTranspose"] = _to_completion(
        harness.compiled(BACKEND, conv_transpose), y, conv_kernel
    )
    return runners


def _grad_of_forward(forward_fn, x):
    """`(cotangent, kernel) ->` the gradient w.r.t. `x` of `forward_fn(x,
    kernel)`, pulled back from `cotangent`: compiled on JAX and TensorFlow
    (which drop the unused forward matmul), eager on torch (whose autograd
    runs the forward pass first)."""
    if BACKEND == "jax":
        import jax

        @jax.jit
        def grad_of_forward(cotangent, kernel):
            _, pullback = jax.vjp(lambda x: forward_fn(x, kernel), x)
            return pullback(cotangent)[0]

    elif BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function
        def grad_of_forward(cotangent, kernel):
            with tf.GradientTape() as tape:
                tape.watch(x)
                outputs = forward_fn(x, kernel)
            return tape.gradient(outputs, x, output_gradients=cotangent)

    else:
        import torch

        def grad_of_forward(cotangent, kernel):
            return torch.autograd.grad(forward_fn(x, kernel), x, cotangent)[0]

    return grad_of_forward


def _to_completion(fn, *args):
    return lambda: harness.block(BACKEND, fn(*args))


def time_shape(shape, budget_s, min_rounds=5, max_rounds=30):
    """Median milliseconds per implementation, in interleaved rounds."""
    times = harness.interleaved_rounds(
        _runners(shape), max_rounds, budget_s, min_rounds=min_rounds
    )
    return {
        name: {"median_ms": harness.median_ms(samples), "rounds": len(samples)}
        for name, samples in times.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--budget", type=float, default=10.0, help="seconds of rounds per shape"
    )
    parser.add_argument("--shapes", help="comma-separated shape names")
    args = parser.parse_args()
    shapes = TRANSPOSE_CASES
    if args.shapes:
        shapes = tuple(s for s in shapes if s.name in args.shapes.split(","))

    results = []
    for shape in shapes:
        timings = time_shape(shape, args.budget)
        ours = timings["ours"]["median_ms"]
        conv = timings[f"Conv{shape.rank}DTranspose"]["median_ms"]
        results.append(
            {
                "name": shape.name,
                "label": shape.label,
                "positions": math.prod(shape.spatial),
                "timings": timings,
                "ours_vs_grad_of_forward": ours
                / timings["grad of forward"]["median_ms"],
                "ours_vs_conv_transpose": ours / conv,
            }
        )
        _print_shape(results[-1])

    record = {
        "backend": harness.backend_version(BACKEND),
        "keras": keras.__version__,
        "formulation": "scatter-add" if _schedule.HAS_SCATTER_ADD else "gather-sum",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "shapes": results,
    }
    out = HERE / "results" / f"transpose_{BACKEND}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(HERE.parent)}")


def _print_shape(result):
    versions = f"{harness.backend_version(BACKEND)}, keras {keras.__version__}"
    print(f"\n{result['label']} ({versions})")
    ours = result["timings"]["ours"]["median_ms"]
    for name, timing in result["timings"].items():
        print(
            f"  {name:<20} {timing['median_ms']:9.2f} ms  "
            f"(ours / this = {ours / timing['median_ms']:.2f}, "
            f"{timing['rounds']} rounds)"
        )


if __name__ == "__main__":
    main()
