"""Benchmarks of keras-localconn, run as modules from the repository root.

    KERAS_BACKEND=jax python -m benchmarks.run        # `nox -s bench-jax`
    KERAS_BACKEND=jax python -m benchmarks.transpose  # the transposed layers

Importing the package turns TensorFlow's C++ INFO and WARNING logs off
(``TF_CPP_MIN_LOG_LEVEL=2``, unless already set), before any module of it
loads TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
