"""Gradients through the active backend's own autodiff (tests only)."""

import keras
import numpy as np


def gradients(fn, *args):
    """Gradients of the scalar `fn(*args)` w.r.t. every array in `args`."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grads = jax.grad(fn, argnums=tuple(range(len(args))))(*args)
    elif backend == "tensorflow":
        import tensorflow as tf

        variables = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            value = fn(*variables)
        grads = tape.gradient(value, variables)
    elif backend == "torch":
        tensors = [
            keras.ops.convert_to_tensor(a).detach().requires_grad_(True) for a in args
        ]
        fn(*tensors).backward()
        grads = [t.grad for t in tensors]
    else:
        raise AssertionError(f"no autodiff on backend {backend!r}")
    return [keras.ops.convert_to_numpy(g) for g in grads]


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))
