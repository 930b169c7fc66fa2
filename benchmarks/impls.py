"""What is timed on each backend: this package, the backend's anchor, the floor.

Every implementation is an `Impl`: `make(case)` builds it (weights created,
functions wrapped for compilation, nothing compiled yet) and returns a
`Runner`, whose `forward()` and `fwd_bwd()` run one step and block until the
result exists. Forward+backward returns the gradients w.r.t. the input and
the kernel, pulled back from a fixed random output cotangent, so no
implementation can profit from a trivial loss.

Roles: ``ours`` (this package's layer, the number the targets are about),
``variant`` (the same under another compilation mode; timed, but not built
in a process of its own), ``anchor`` (the backend's established alternative)
and ``floor`` (one batched matmul ``(P, B, K) @ (P, K, F)`` on patches
extracted beforehand).
"""

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from benchmarks.cases import ConvShape


@dataclasses.dataclass
class Runner:
    forward: Callable[[], object]
    fwd_bwd: Callable[[], object]


@dataclasses.dataclass(frozen=True)
class Impl:
    name: str
    role: str
    make: Callable[[ConvShape], Runner]
    # None: every case; else the case names it runs on (a note says why).
    cases: tuple | None = None
    note: str = ""
    # Case names where it is timed only in its own subprocess (one build, a
    # timeout, 1-3 runs): those where it takes minutes.
    timed_in_child: tuple = ()

    def runs_on(self, case):
        return self.cases is None or case.name in self.cases


@functools.lru_cache(maxsize=1)
def case_arrays(case, seed=0):
    """Input, kernel and output cotangent of `case`, as float32 numpy."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.input_shape, dtype=np.float32)
    kernel = rng.standard_normal(case.kernel_shape, dtype=np.float32)
    kernel *= 1.0 / np.sqrt(case.patch_size)
    cotangent = rng.standard_normal(case.output_shape, dtype=np.float32)
    return x, kernel, cotangent


@functools.lru_cache(maxsize=1)
def floor_arrays(case, seed=0):
    """The floor's patches, kernel and output cotangent, as float32 numpy."""
    rng = np.random.default_rng(seed)
    patches = rng.standard_normal(
        (case.positions, case.batch, case.patch_size), dtype=np.float32
    )
    kernel = rng.standard_normal(case.kernel_shape, dtype=np.float32)
    cotangent = rng.standard_normal(
        (case.positions, case.batch, case.filters), dtype=np.float32
    )
    return patches, kernel, cotangent


def warm_up_backend(backend):
    """Start the backend's runtime (first op, first compiled function).

    Every implementation pays this once per process; build + first call
    measures what comes after.
    """
    import keras
    from keras import ops

    import keras_localconn.layers  # noqa: F401  (import time is not build time)

    ops.convert_to_numpy(ops.matmul(ops.ones((2, 2)), ops.ones((2, 2))))
    keras.layers.Dense(1)(ops.ones((1, 1)))  # Keras' first layer and weight
    if backend == "jax":
        import jax
        from flax import linen

        jax.block_until_ready(jax.jit(lambda a: a * 2)(np.ones(2)))
        linen.Dense(1).init(jax.random.key(0), np.ones((1, 1)))
    if backend == "tensorflow":
        import tensorflow as tf
        import tf_keras

        tf_keras.layers.Dense(1)(tf.ones((1, 1)))

        tf.function(lambda a: a * 2)(tf.ones(2))
        with tf.GradientTape() as tape:
            a = tf.ones(2)
            tape.watch(a)
            b = a * a
        tape.gradient(b, a)


def _our_layer(case):
    """This package's layer, built for `case` (the weights benchmarked)."""
    from keras_localconn import layers

    cls = {1: layers.LocallyConnected1D, 2: layers.LocallyConnected2D}[case.rank]
    layer = cls(case.filters, case.kernel_size, strides=case.strides, use_bias=False)
    layer.build(case.input_shape)
    return layer


def _our_fn(layer):
    """`fn(x, kernel)`: the layer's own call, with `kernel` as its weight.

    `stateless_call` is how Keras trains a layer on JAX; it also keeps
    TensorFlow's autograph out of the package's code, as inside a model.
    """

    def fn(x, kernel):
        return layer.stateless_call([kernel], [], x)[0]

    return fn


# --------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------


def _jax_runner(fn, x, params, cotangent):
    import jax

    forward = jax.jit(fn)

    @jax.jit
    def fwd_bwd(x, params, cotangent):
        _, pullback = jax.vjp(fn, x, params)
        return pullback(cotangent)

    return Runner(
        forward=lambda: jax.block_until_ready(forward(x, params)),
        fwd_bwd=lambda: jax.block_until_ready(fwd_bwd(x, params, cotangent)),
    )


def _jax_ours(case):
    import jax.numpy as jnp

    x, _, cotangent = case_arrays(case)
    layer = _our_layer(case)
    return _jax_runner(
        _our_fn(layer), jnp.asarray(x), layer.kernel.value, jnp.asarray(cotangent)
    )


def _jax_flax(case):
    import jax
    import jax.numpy as jnp
    from flax import linen

    x, _, cotangent = case_arrays(case)
    module = linen.ConvLocal(
        features=case.filters,
        kernel_size=case.kernel_size,
        strides=case.strides,
        padding="VALID",
        use_bias=False,
    )
    x = jnp.asarray(x)
    params = module.init(jax.random.key(0), x)
    return _jax_runner(
        lambda x, params: module.apply(params, x), x, params, jnp.asarray(cotangent)
    )


def _jax_floor(case):
    import jax.numpy as jnp

    patches, kernel, cotangent = (jnp.asarray(a) for a in floor_arrays(case))
    return _jax_runner(jnp.matmul, patches, kernel, cotangent)


JAX = (
    Impl("ours (jax.jit)", "ours", _jax_ours),
    Impl("flax ConvLocal (jax.jit)", "anchor", _jax_flax),
    Impl("floor: batched matmul", "floor", _jax_floor),
)


# --------------------------------------------------------------------------
# TensorFlow
# --------------------------------------------------------------------------


def _tf_runner(fn, x, params, cotangent, jit_compile=False):
    """`fn(x, params)`; gradients w.r.t. `x` and every tensor in `params`."""
    import tensorflow as tf

    forward = tf.function(fn, jit_compile=jit_compile)

    @tf.function(jit_compile=jit_compile)
    def fwd_bwd(x, cotangent):
        with tf.GradientTape() as tape:
            tape.watch(x)
            tape.watch(params)
            y = fn(x, params)
        return tape.gradient(y, [x, *params], output_gradients=cotangent)

    return Runner(
        forward=lambda: forward(x, params),
        fwd_bwd=lambda: fwd_bwd(x, cotangent),
    )


def _tf_ours(case, jit_compile=False):
    import tensorflow as tf

    x, _, cotangent = case_arrays(case)
    layer = _our_layer(case)
    fn = _our_fn(layer)
    return _tf_runner(
        lambda x, params: fn(x, params[0]),
        tf.constant(x),
        [layer.kernel.value],
        tf.constant(cotangent),
        jit_compile=jit_compile,
    )


def _tf_keras(case, implementation):
    import tensorflow as tf
    import tf_keras

    x, _, cotangent = case_arrays(case)
    cls = {
        1: tf_keras.layers.LocallyConnected1D,
        2: tf_keras.layers.LocallyConnected2D,
    }[case.rank]
    layer = cls(
        case.filters,
        case.kernel_size,
        strides=case.strides,
        use_bias=False,
        implementation=implementation,
    )
    layer.build(case.input_shape)
    return _tf_runner(
        lambda x, params: layer(x),
        tf.constant(x),
        [layer.kernel],
        tf.constant(cotangent),
    )


def _tf_floor(case):
    import tensorflow as tf

    patches, kernel, cotangent = (tf.constant(a) for a in floor_arrays(case))
    return _tf_runner(
        lambda p, params: tf.matmul(p, params[0]), patches, [kernel], cotangent
    )


_DENSE_NOTE = (
    "only at the strided shape: its dense (in × out) kernel and mask would "
    "need 1.9 GB at 32×32 and 133 GB at 128×128"
)
_SPARSE_NOTE = (
    "only at the strided shape, and timed in its own process (not "
    "interleaved): its build enumerates every kernel entry in Python (33 s "
    "here at the strided shape, with 4× as many at 32×32 stride 1)"
)

TENSORFLOW = (
    Impl("ours (tf.function)", "ours", _tf_ours),
    Impl(
        "ours (tf.function, XLA)",
        "variant",
        lambda case: _tf_ours(case, jit_compile=True),
    ),
    Impl(
        "tf-keras implementation=1",
        "anchor",
        lambda c: _tf_keras(c, 1),
        note="at 128×128, timed in its own process with a time limit: its "
        "graph holds one slice per output position (15 876), and building "
        "and tracing it did not finish in 90 s (nor in 150 s in an earlier "
        "run)",
        timed_in_child=("large",),
    ),
    Impl(
        "tf-keras implementation=2",
        "anchor",
        lambda c: _tf_keras(c, 2),
        cases=("strided",),
        note=_DENSE_NOTE,
    ),
    Impl(
        "tf-keras implementation=3",
        "anchor",
        lambda c: _tf_keras(c, 3),
        cases=("strided",),
        note=_SPARSE_NOTE,
        timed_in_child=("strided",),
    ),
    Impl("floor: batched matmul", "floor", _tf_floor),
)


# --------------------------------------------------------------------------
# PyTorch (eager)
# --------------------------------------------------------------------------


def _torch_runner(fn, x, params, cotangent):
    import torch

    x = x.requires_grad_(True)
    params = [p.requires_grad_(True) for p in params]

    def forward():
        with torch.no_grad():
            return fn(x, params)

    def fwd_bwd():
        y = fn(x, params)
        return torch.autograd.grad(y, [x, *params], cotangent)

    return Runner(forward=forward, fwd_bwd=fwd_bwd)


def _torch_ours(case):
    import torch

    x, _, cotangent = case_arrays(case)
    layer = _our_layer(case)
    fn = _our_fn(layer)
    kernel = layer.kernel.value.detach().clone()
    return _torch_runner(
        lambda x, params: fn(x, params[0]),
        torch.from_numpy(x),
        [kernel],
        torch.from_numpy(cotangent),
    )


def _torch_unfold(case):
    """The usual recipe: `F.unfold` + `einsum`, in torch's NCHW layout."""
    import torch
    import torch.nn.functional as F

    x, kernel, cotangent = case_arrays(case)
    # NC(H)W input and output; the kernel's K in unfold's (channel, offsets)
    # order.
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    cotangent = torch.from_numpy(np.ascontiguousarray(np.moveaxis(cotangent, -1, 1)))
    kernel = torch.from_numpy(kernel)
    size = case.kernel_size if case.rank == 2 else (1, *case.kernel_size)
    stride = case.strides if case.rank == 2 else (1, *case.strides)
    out_shape = (case.batch, case.filters, *case.output_spatial)

    def fn(x, params):
        images = x if case.rank == 2 else x.unsqueeze(2)
        columns = F.unfold(images, size, stride=stride)  # (B, K, P)
        y = torch.einsum("bkp,pkf->bfp", columns, params[0])
        return y.reshape(out_shape)

    return _torch_runner(fn, x, [kernel], cotangent)


def _torch_floor(case):
    import torch

    patches, kernel, cotangent = (torch.from_numpy(a) for a in floor_arrays(case))
    return _torch_runner(
        lambda p, params: torch.bmm(p, params[0]), patches, [kernel], cotangent
    )


TORCH = (
    Impl("ours (eager)", "ours", _torch_ours),
    Impl("unfold + einsum (eager)", "anchor", _torch_unfold),
    Impl("floor: batched matmul", "floor", _torch_floor),
)


IMPLS = {"jax": JAX, "tensorflow": TENSORFLOW, "torch": TORCH}
