"""How the forward engine computes one call: its `Formulation`, chosen here.

`_local_conv` can build and contract the patches all at once or in chunks of
output positions, with input rows of ``(batch, channels)`` or ``(channels,
batch)``, looping over chunks with `keras.ops.map` or a Python loop, with or
without rebuilding the patches for the backward pass. A `Formulation` names
one such choice; `formulation` picks the default from static shapes and the
backend. Tests and benchmarks pass a `Formulation` explicitly to
`_local_conv.local_conv`; nothing here is meant to be patched.

The measurements behind each choice are in docs/performance.md
("How it computes").
"""

from typing import NamedTuple

import keras
import numpy as np

# A chunk's patches (positions x K x batch) are kept near this size, so that
# they are consumed from cache rather than making a round trip to memory, and
# so that no more than this many bytes of patches exist at once.
CHUNK_BYTES = 4 * 2**20
# The batch size assumed where it is unknown or symbolic (a graph traced or
# exported for any batch size).
ASSUMED_BATCH = 32


class Formulation(NamedTuple):
    """One way to compute a local convolution; see `_local_conv`.

    Attributes:
        chunk: output positions per chunk; None for all positions at once.
        batch_before_channels: input rows of ``(batch, channels)``, else
            ``(channels, batch)``.
        loop_by_map: chunks through `keras.ops.map`, else through a Python
            loop over unstacked kernel chunks.
        remat: chunks' patches rebuilt in the backward pass (`keras.remat`),
            not kept.
    """

    chunk: int | None = None
    batch_before_channels: bool = True
    loop_by_map: bool = True
    remat: bool = True


class _BackendPolicy(NamedTuple):
    batch_before_channels: bool
    loop_by_map: bool
    remat: bool
    # Chunks only once the patches outweigh the kernel (batch > filters).
    chunk_above_kernel: bool


_POLICIES = {
    "jax": _BackendPolicy(True, True, True, True),
    "tensorflow": _BackendPolicy(False, False, True, False),
    "torch": _BackendPolicy(False, False, False, False),
}
_DEFAULT_POLICY = _BackendPolicy(True, True, True, True)


def chunk_positions(geo, batch, itemsize, filters, above_kernel=False):
    """Output positions per chunk, or None for all positions at once.

    Batch 1 and patches of at most `CHUNK_BYTES` in all take all positions at
    once (at batch 1 the patches are 1/filters of the kernel). With
    `above_kernel`, only patches larger than the kernel are chunked.
    """
    if not isinstance(batch, (int, np.integer)):
        batch = ASSUMED_BATCH
    per_position = geo.patch_size * batch * itemsize
    if batch == 1 or geo.num_positions * per_position <= CHUNK_BYTES:
        return None
    if above_kernel and batch <= filters:  # patches / kernel = batch / filters
        return None
    return max(1, min(geo.num_positions, CHUNK_BYTES // per_position))


def formulation(geo, batch, dtype, filters, backend=None):
    """The default `Formulation` for `geo` under `backend` (default: Keras').

    `batch` may be None or symbolic; `dtype` is the inputs' dtype.
    """
    policy = _POLICIES.get(backend or keras.backend.backend(), _DEFAULT_POLICY)
    itemsize = np.dtype(keras.backend.standardize_dtype(dtype)).itemsize
    chunk = chunk_positions(geo, batch, itemsize, filters, policy.chunk_above_kernel)
    return Formulation(
        chunk, policy.batch_before_channels, policy.loop_by_map, policy.remat
    )
